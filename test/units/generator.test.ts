// units/node-image-pivot-generator, run the way systemd runs it (three output dirs), under dash,
// against a fake root (NODE_IMAGE_PIVOT_ROOT) holding the config, the state file and the units.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StateRecorder } from '../../src/state.ts';

const GENERATOR = resolve(import.meta.dirname, '../../units/node-image-pivot-generator');
const ETC_TARGET = '/etc/systemd/system/node-image-pivot.target';

let root: string;
let out: string;

function put(path: string, text = ''): void {
  mkdirSync(dirname(join(root, path)), { recursive: true });
  writeFileSync(join(root, path), text);
}

function config(extra: Record<string, unknown> = {}, indent: number | undefined = 2): void {
  put('/etc/node-image-pivot/config.json', JSON.stringify({ image: 'quay.io/x/node@sha256:' + 'a'.repeat(64), ...extra }, null, indent));
}

function run(args = [join(out, 'normal'), join(out, 'early'), join(out, 'late')]) {
  const r = spawnSync('dash', [GENERATOR, ...args], { encoding: 'utf8', env: { PATH: process.env.PATH, NODE_IMAGE_PIVOT_ROOT: root } });
  const link = join(out, 'early', 'default.target');
  return {
    status: r.status,
    stderr: r.stderr,
    defaultTarget: linkTarget(link),
    normalOrLate: ['normal', 'late'].some((d) => existsSync(join(out, d, 'default.target'))),
  };
}

function linkTarget(p: string): string | undefined {
  try {
    return readlinkSync(p);
  } catch {
    return undefined;
  }
}

beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'nip-gen-root-'));
  out = mkdtempSync(join(tmpdir(), 'nip-gen-out-'));
  put(ETC_TARGET, '[Unit]\nAllowIsolate=yes\n');
  put('/proc/cmdline', 'BOOT_IMAGE=/vmlinuz root=/dev/vda ro quiet\n');
});

afterEach(() => {
  rmSync(root, { recursive: true, force: true });
  rmSync(out, { recursive: true, force: true });
});

describe('node-image-pivot-generator', () => {
  it('points default.target at the pivot target, in the early dir only, while a pivot is needed', () => {
    config();
    const r = run();
    expect(r).toMatchObject({ status: 0, defaultTarget: ETC_TARGET, normalOrLate: false });
    expect(r.stderr).toMatch(/default\.target -> node-image-pivot\.target/);
    // Generators rerun on every daemon-reload: a second run is the same.
    expect(run()).toMatchObject({ status: 0, defaultTarget: ETC_TARGET });
  });

  it('does nothing without a config', () => {
    expect(run()).toMatchObject({ status: 0, defaultTarget: undefined });
  });

  it('finds the target where it is installed, and does nothing when it is not installed', () => {
    config();
    rmSync(join(root, ETC_TARGET));
    put('/usr/lib/systemd/system/node-image-pivot.target', '[Unit]\n');
    expect(run().defaultTarget).toBe('/usr/lib/systemd/system/node-image-pivot.target');
    rmSync(join(out, 'early'), { recursive: true });
    rmSync(join(root, '/usr/lib/systemd/system/node-image-pivot.target'));
    const r = run();
    expect(r).toMatchObject({ status: 0, defaultTarget: undefined });
    expect(r.stderr).toMatch(/not installed/);
  });

  it('reads the state file the agent writes: done and skipped end the detour, running and failed do not', () => {
    config();
    const stateDir = join(root, 'run/node-image-pivot');
    for (const [result, expected] of [['running', ETC_TARGET], ['failed', ETC_TARGET], ['done', undefined], ['skipped', undefined]] as const) {
      rmSync(join(out, 'early'), { recursive: true, force: true });
      const rec = new StateRecorder(stateDir, 'isolate');
      const phase = rec.startPhase('preflight');
      rec.endPhase(phase, 'done'); // a nested "result": "done" that must not count
      if (result !== 'running') rec.finish(result);
      expect(run().defaultTarget, `state ${result}`).toBe(expected);
    }
  });

  it('honours skipIfPathExists, in any JSON layout, counting dangling symlinks as existing', () => {
    config({ skipIfPathExists: ['/usr/bin/oc', '/usr/bin/kubelet'] });
    expect(run().defaultTarget).toBe(ETC_TARGET);
    rmSync(join(out, 'early'), { recursive: true });

    put('/usr/bin/kubelet');
    expect(run().defaultTarget).toBeUndefined();
    rmSync(join(root, 'usr/bin/kubelet'));

    config({ skipIfPathExists: ['/usr/bin/oc'] }, undefined); // one line, no spaces
    symlinkSync('/nowhere', join(root, 'usr/bin/oc'));
    expect(run().defaultTarget).toBeUndefined();

    config({ skipIfPathExists: [] });
    expect(run().defaultTarget).toBe(ETC_TARGET);
  });

  it('leaves the decision to the agent when the skip list is not plain paths (errs towards the pivot)', () => {
    put('/usr/bin/oc');
    config({ skipIfPathExists: ['/usr/bin/oc', '/opt/we"ird'] });
    const r = run();
    expect(r.defaultTarget).toBe(ETC_TARGET);
    expect(r.stderr).toMatch(/not a list of plain paths/);
    // A glob-looking path is data: "/usr/bin/*" must not match /usr/bin/oc.
    rmSync(join(out, 'early'), { recursive: true });
    config({ skipIfPathExists: ['/usr/bin/*'] });
    expect(run().defaultTarget).toBe(ETC_TARGET);
  });

  it('is disabled by node-image-pivot=off on the kernel command line', () => {
    config();
    put('/proc/cmdline', 'root=/dev/vda node-image-pivot=off quiet\n');
    expect(run().defaultTarget).toBeUndefined();
  });

  it('refuses to run without the generator directories', () => {
    config();
    const r = run([]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/usage/);
  });
});
