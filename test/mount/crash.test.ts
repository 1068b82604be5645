// kill -9 at every hit of every mount.* failpoint, inside `unshare -m` under a shared parent (as
// on a systemd host), then a rerun in the same namespace: it must converge on exactly one mount
// on the target, the staged tree visible, and no mount of ours left below the state directory
// except one read-only, private booted-usr bind.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { planUsrMount, probePathFacts } from '../../src/mount.ts';
import { parseMountinfo } from '../../src/mountinfo.ts';
import type { OwnMounts } from '../../src/mount-recovery.ts';

const CHILD = join(import.meta.dirname, 'fixtures', 'phase-child.ts');
const HEX = 'a'.repeat(64);
const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-m', '--propagation', 'private', 'true']).status === 0;

let root: string;
let own: OwnMounts;
let stagedRoot: string;

function write(path: string, text: string): void {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, text);
}

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'nip-crash-'));
  write(join(root, 'usr/bin/old-only'), 'old');
  write(join(root, 'usr/lib/modules/6.1.0/kernel.ko'), 'booted-modules');
  stagedRoot = join(root, 'state/staging', HEX);
  write(join(stagedRoot, 'usr/bin/new-only'), 'new');
  write(join(stagedRoot, 'usr/lib/os-release'), 'ID=node');
  own = { usr: join(root, 'usr'), bootedUsr: join(root, 'state/booted-usr'), assembly: join(root, 'state/usr-assembly'), stagingDir: join(root, 'state/staging') };
});
afterEach(() => rmSync(root, { recursive: true, force: true }));

interface ChildReport { detached?: string[]; mount?: string; bootedUsr?: string; error?: { kind: string; message: string } }
interface Outcome { runs: Array<{ rc: number; report: ChildReport | undefined }>; mountinfo: string; shows: string }

/**
 * Runs the phase once per entry of `runs` (each with its own failpoints) in one namespace, so
 * what a killed run leaves is there for the next. The first run may undo right after mounting.
 */
function inNamespace(runs: Array<{ failpoints?: string; undo?: boolean }>): Outcome {
  const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  const lines = ['set -u', `mount --bind ${q(root)} ${q(root)}`, `mount --make-shared ${q(root)}`];
  runs.forEach((r, i) => {
    const scenario = JSON.stringify({ own, stagedRoot, preserve: ['/usr/lib/modules'], undo: r.undo === true });
    lines.push(`NODE_IMAGE_PIVOT_FAILPOINTS=${q(r.failpoints ?? '')} ${q(process.execPath)} ${q(CHILD)} ${q(scenario)} > ${q(join(root, `run${i}.json`))}; echo $? > ${q(join(root, `run${i}.rc`))}`);
  });
  lines.push(`cat /proc/self/mountinfo > ${q(join(root, 'mountinfo'))}`, `cat ${q(join(own.usr, 'bin/new-only'))} > ${q(join(root, 'shows'))} 2>/dev/null || true`);
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', lines.join('\n')], {
    encoding: 'utf8', env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'error' },
  });
  if (r.status !== 0) throw new Error(`namespace script failed (${String(r.status)}): ${r.stderr}`);
  const read = (name: string): string => readFileSync(join(root, name), 'utf8');
  return {
    runs: runs.map((_, i) => {
      const text = existsSync(join(root, `run${i}.json`)) ? read(`run${i}.json`).trim() : '';
      return { rc: Number(read(`run${i}.rc`)), report: text ? (JSON.parse(text) as ChildReport) : undefined };
    }),
    mountinfo: read('mountinfo'),
    shows: read('shows'),
  };
}

function expectConverged(o: Outcome): void {
  const last = o.runs.at(-1)!;
  expect(last.rc).toBe(0);
  expect(last.report?.error).toBeUndefined();
  expect(o.shows).toBe('new');
  const entries = parseMountinfo(o.mountinfo);
  expect(entries.filter((e) => e.mountPoint === own.usr)).toHaveLength(1);
  const underState = entries.filter((e) => e.mountPoint.startsWith(`${join(root, 'state')}/`));
  expect(underState.map((e) => e.mountPoint)).toEqual([own.bootedUsr]);
  expect(underState[0]!.options.split(',')).toContain('ro');
  expect(underState[0]!.optional).toEqual([]);
}

const KILLED = 137;

describe.runIf(canUnshare)('kill -9 in the mount phase, then a rerun', () => {
  it('the fixture counts every mount.prepare hit (positive control for the cases below)', () => {
    const plan = planUsrMount({ stagedRoot, preserve: ['/usr/lib/modules'], target: own.usr, workDir: own.assembly },
      probePathFacts({ stagedRoot, preserve: ['/usr/lib/modules'], target: own.usr }));
    expect(plan.prepare).toHaveLength(10);
    // One more hit than there are steps does not fire: the run completes.
    const o = inNamespace([{ failpoints: 'mount.prepare:kill@11' }]);
    expect(o.runs[0]!.rc).toBe(0);
    expectConverged(o);
  });

  const points = [
    ...Array.from({ length: 3 }, (_, i) => `mount.booted-usr:kill@${i + 1}`),
    ...Array.from({ length: 10 }, (_, i) => `mount.prepare:kill@${i + 1}`),
    'mount.switch:kill', 'mount.switched:kill',
  ];
  it.each(points)('%s: the rerun converges with one mount on the target and no leftovers', (point) => {
    const o = inNamespace([{ failpoints: point }, {}]);
    expect(o.runs[0]!.rc).toBe(KILLED);
    expectConverged(o);
  });

  it('mount.undo:kill (an undo after a failed /etc apply): the rerun keeps the switched target', () => {
    const o = inNamespace([{ failpoints: 'mount.undo:kill', undo: true }, {}]);
    expect(o.runs[0]!.rc).toBe(KILLED);
    expect(o.runs[1]!.report?.mount).toBe('skipped');
    expectConverged(o);
  });

  it('mount.release:kill (a rerun killed while detaching leftovers): the next run finishes the job', () => {
    const o = inNamespace([{ failpoints: 'mount.switch:kill' }, { failpoints: 'mount.release:kill@1' }, {}]);
    expect(o.runs.map((r) => r.rc)).toEqual([KILLED, KILLED, 0]);
    expect(o.runs[2]!.report?.detached?.length).toBeGreaterThan(0);
    expectConverged(o);
  });

  it('a rerun after two kills at mount.switch does not stack assemblies', () => {
    const o = inNamespace([{ failpoints: 'mount.switch:kill' }, { failpoints: 'mount.switch:kill' }, {}]);
    expect(o.runs.map((r) => r.rc)).toEqual([KILLED, KILLED, 0]);
    expect(o.runs[2]!.report?.detached).toEqual([join(own.assembly, 'usr/lib/modules'), join(own.assembly, 'usr'), own.assembly]);
    expectConverged(o);
  });
});
