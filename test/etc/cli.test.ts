// The etc-merge command: human dry run, --json shape, exit 7 on conflict with nothing changed.
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { cleanup, d, f, materialize, realistic, snapshot, tempDir } from './helpers.ts';

const MAIN = resolve(import.meta.dirname, '../../src/main.ts');
const top = tempDir('nip-etc-cli-');
afterAll(() => cleanup(top));

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' };
  delete env.NODE_IMAGE_PIVOT_FAILPOINTS;
  const r = spawnSync(process.execPath, [MAIN, ...args], { env, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function setup(name: string, specs = realistic()): { etc: string; args: string[] } {
  const dir = join(top, name);
  materialize(join(dir, 'base'), specs.base);
  materialize(join(dir, 'etc'), specs.current);
  materialize(join(dir, 'new'), specs.next);
  const etc = join(dir, 'etc');
  return { etc, args: ['etc-merge', '--base', join(dir, 'base'), '--current', etc, '--new', join(dir, 'new')] };
}

describe('etc-merge CLI', () => {
  it('--dry-run prints the plan grouped with counts and changes nothing', () => {
    const { etc, args } = setup('dry');
    const before = snapshot(etc);
    const r = cli([...args, '--dry-run']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^\/etc merge plan for .*: \d+ actions \(\d+ add, \d+ replace, \d+ symlink, \d+ mkdir, \d+ remove, \d+ chmod, \d+ chown\), 1 warning, 0 ignored/);
    expect(r.stdout).toContain('\nadd (4):\n  brand/new/deep/file  [file 0640 0:0, 4 bytes]\n');
    expect(r.stdout).toMatch(/\nremove \(\d+\):\n {2}obsolete {2}\[directory and 3 entries below it\]/);
    expect(r.stdout).toContain('kubernetes/kubelet.conf: changed locally and upstream: the local version is kept');
    expect(r.stdout).toContain('chmod (1):\n  modes  [0644 -> 0600]');
    expect(r.stdout).toContain('chown (2):\n  owned  [0:0 -> 1000:1000]\n  suid  [0:0 -> 0:1000]');
    expect(snapshot(etc)).toEqual(before);
  });

  it('--dry-run --json has counts, actions, warnings and ignored entries', () => {
    const { etc, args } = setup('json');
    const before = snapshot(etc);
    const r = cli([...args, '--dry-run', '--json']);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { dryRun: boolean; plan: { counts: Record<string, number>; total: number; actions: Array<Record<string, unknown>>; warnings: unknown[]; ignored: unknown[]; conflicts: unknown[] } };
    expect(out.dryRun).toBe(true);
    expect(out.plan.total).toBe(out.plan.actions.length);
    expect(Object.values(out.plan.counts).reduce((a, b) => a + b, 0)).toBe(out.plan.total);
    expect(out.plan.actions).toContainEqual({ action: 'chmod', path: 'modes', was: 'file', from: '0644', mode: '0600' });
    expect(out.plan.actions).toContainEqual(expect.objectContaining({ action: 'symlink', path: 'file-to-link', was: 'file', target: 'hostname' }));
    expect(out.plan.warnings).toEqual([expect.objectContaining({ code: 'both-changed', path: 'kubernetes/kubelet.conf' })]);
    expect(out.plan.conflicts).toEqual([]);
    expect(snapshot(etc)).toEqual(before);
  });

  it('applies and reports; a second run has nothing to do', () => {
    const { etc, args } = setup('apply');
    const r = cli([...args, '--json']);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { result: { applied: number }; recovered: string };
    expect(out.recovered).toBe('none');
    expect(out.result.applied).toBeGreaterThan(15);
    expect(readFileSync(join(etc, 'pull-secret.json'), 'utf8')).toContain('auths');
    const again = cli(args);
    expect(again.status).toBe(0);
    expect(again.stdout).toMatch(/^applied 0 actions/);
  });

  it('exits 7 on a conflict, naming the path and the fix, and changes nothing', () => {
    const { etc, args } = setup('conflict', {
      base: { 'registries.conf': f('a') },
      current: { 'registries.conf': f('local') },
      next: { 'registries.conf': d(), 'registries.conf/00.conf': f('x') },
    });
    const before = snapshot(etc);
    for (const extra of [[], ['--dry-run'], ['--dry-run', '--json']]) {
      const r = cli([...args, ...extra]);
      expect(r.status).toBe(7);
      expect(r.stderr).toContain('etc-conflict');
      expect(r.stderr).toContain('registries.conf');
      expect(r.stderr).toMatch(/Fix: move the local file aside/);
      expect(snapshot(etc)).toEqual(before);
    }
  });

  it('missing options and missing directories are clear errors', () => {
    const r = cli(['etc-merge', '--base', '/x']);
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/missing --current/);
    const { args } = setup('missing');
    const bad = cli([...args.slice(0, -1), join(top, 'does-not-exist')]);
    expect(bad.status).toBe(7);
    expect(bad.stderr).toMatch(/does-not-exist/);
  });
});
