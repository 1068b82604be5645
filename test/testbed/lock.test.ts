// scripts/testbed/lock.ts: parallel test processes build the rootfs once; a crashed holder does
// not wedge the next run.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { withLock } from '../../scripts/testbed/lock.ts';

const LOCK_TS = resolve(import.meta.dirname, '../../scripts/testbed/lock.ts');
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'nip-lock-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/**
 * One process that takes the lock. Before asking for it, it signs `waiting`; inside, the first
 * one in holds on until all `holders` have signed, so the others are really contending.
 */
function holder(lock: string, log: string, waiting: string, holders: number): Promise<number | null> {
  const code = `import { withLock } from ${JSON.stringify(LOCK_TS)};
import { appendFileSync, readFileSync } from 'node:fs';
appendFileSync(${JSON.stringify(waiting)}, process.pid + '\\n');
await withLock(${JSON.stringify(lock)}, async () => {
  appendFileSync(${JSON.stringify(log)}, 'in ' + process.pid + '\\n');
  const deadline = Date.now() + 60000;
  while (readFileSync(${JSON.stringify(waiting)}, 'utf8').trim().split('\\n').length < ${holders}) {
    if (Date.now() > deadline) process.exit(3);
    await new Promise((r) => setTimeout(r, 20));
  }
  appendFileSync(${JSON.stringify(log)}, 'out ' + process.pid + '\\n');
}, 120000);`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: 'inherit' });
  return new Promise((r) => child.once('exit', (c) => r(c)));
}

describe('withLock', () => {
  it('lets one process at a time in, across processes', async () => {
    const lock = join(dir, 'x.lock');
    const log = join(dir, 'log');
    const waiting = join(dir, 'waiting');
    expect(await Promise.all([1, 2, 3].map(() => holder(lock, log, waiting, 3)))).toEqual([0, 0, 0]);
    const lines = readFileSync(log, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(6);
    for (let i = 0; i < 6; i += 2) {
      expect(lines[i]).toMatch(/^in /);
      expect(lines[i + 1]).toBe(lines[i]!.replace('in', 'out'));
    }
    expect(existsSync(lock)).toBe(false);
  });

  it('breaks the lock of a holder that died, and releases on a throw', async () => {
    const lock = join(dir, 'x.lock');
    const dead = spawnSync('true').pid!;
    writeFileSync(lock, `${dead}\n`);
    expect(await withLock(lock, async () => 'ran', 2000)).toBe('ran');
    await expect(withLock(lock, async () => {
      throw new Error('boom');
    })).rejects.toThrow('boom');
    expect(existsSync(lock)).toBe(false);
  });

  it('waits for a live holder and gives up after the timeout', async () => {
    const lock = join(dir, 'x.lock');
    writeFileSync(lock, `${process.pid}\n`);
    await expect(withLock(lock, async () => 'never', 300)).rejects.toThrow(/timed out waiting for lock/);
    expect(readFileSync(lock, 'utf8')).toBe(`${process.pid}\n`);
  });
});
