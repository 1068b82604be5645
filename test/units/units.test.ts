// The unit files in units/: systemd-analyze verify accepts them (in a temp root holding the
// host's stock units and a stand-in agent binary), and they say what the pivot relies on.
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExitCode } from '../../src/errors.ts';

const UNITS_DIR = resolve(import.meta.dirname, '../../units');
const UNITS = ['node-image-pivot.target', 'node-image-pivot.service', 'node-image-overlay.service'];

type Unit = Record<string, Record<string, string[]>>;

/** Just enough of systemd.syntax(7) for these files: sections, KEY=VALUE, comments. */
function parseUnit(text: string): Unit {
  const out: Unit = {};
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      section = sec[1]!;
      out[section] ??= {};
      continue;
    }
    const eq = line.indexOf('=');
    const key = line.slice(0, eq);
    (out[section]![key] ??= []).push(line.slice(eq + 1));
  }
  return out;
}

function words(u: Unit, section: string, key: string): string[] {
  return (u[section]?.[key] ?? []).flatMap((v) => v.split(/\s+/)).filter(Boolean);
}

function unit(name: string): Unit {
  return parseUnit(readFileSync(join(UNITS_DIR, name), 'utf8'));
}

describe('systemd-analyze verify', () => {
  let root: string;

  /** A root with the host's stock units, ours in /etc, and the agent at /usr/local/bin (CoreOS shape). */
  function makeRoot(dir: string, files: Record<string, string>, withAgent = true): void {
    mkdirSync(join(dir, 'etc/systemd/system'), { recursive: true });
    mkdirSync(join(dir, 'usr/lib/systemd'), { recursive: true });
    cpSync('/usr/lib/systemd/system', join(dir, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
    mkdirSync(join(dir, 'var/usrlocal/bin'), { recursive: true });
    symlinkSync('../var/usrlocal', join(dir, 'usr/local'));
    // ExecStopPost= runs /bin/sh.
    mkdirSync(join(dir, 'bin'), { recursive: true });
    writeFileSync(join(dir, 'bin/sh'), '');
    chmodSync(join(dir, 'bin/sh'), 0o755);
    if (withAgent) {
      writeFileSync(join(dir, 'var/usrlocal/bin/node-image-pivot'), '#!/bin/sh\n');
      chmodSync(join(dir, 'var/usrlocal/bin/node-image-pivot'), 0o755);
    }
    for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, 'etc/systemd/system', name), text);
  }

  function verify(dir: string, names: string[]): { status: number | null; output: string } {
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', `--root=${dir}`, ...names], { encoding: 'utf8' });
    return { status: r.status, output: `${r.stdout}${r.stderr}`.trim() };
  }

  beforeAll(() => {
    root = mkdtempSync(join(tmpdir(), 'nip-units-'));
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('accepts every unit with no warning at all', () => {
    const dir = join(root, 'ok');
    makeRoot(dir, Object.fromEntries(UNITS.map((n) => [n, readFileSync(join(UNITS_DIR, n), 'utf8')])));
    expect(verify(dir, UNITS)).toEqual({ status: 0, output: '' });
  });

  it('would catch an unknown key, a missing dependency and a missing binary (the check is real)', () => {
    const dir = join(root, 'bad');
    const svc = readFileSync(join(UNITS_DIR, 'node-image-pivot.service'), 'utf8');
    makeRoot(dir, {
      'node-image-pivot.service': svc.replace('RestartSec=15s', 'RestartSec=15s\nRestartSteps=5'),
      'node-image-pivot.target': readFileSync(join(UNITS_DIR, 'node-image-pivot.target'), 'utf8')
        .replace('Requires=basic.target', 'Requires=no-such.target basic.target'),
    }, false);
    const r = verify(dir, ['node-image-pivot.service', 'node-image-pivot.target']);
    expect(r.output).toMatch(/Unknown key '?RestartSteps'?/);
    expect(r.output).toMatch(/no-such\.target not found/);
    expect(r.output).toMatch(/node-image-pivot is not executable/);
  });
});

describe('what the units promise', () => {
  it('the target can be isolated to, needs the pivot, and keeps the node debuggable', () => {
    const t = unit('node-image-pivot.target');
    expect(t.Unit!.AllowIsolate).toEqual(['yes']);
    expect(words(t, 'Unit', 'Requires')).toEqual(expect.arrayContaining(['basic.target', 'node-image-pivot.service']));
    expect(words(t, 'Unit', 'Wants')).toEqual(expect.arrayContaining(['sshd.service', 'getty.target']));
  });

  for (const [name, args] of [['node-image-pivot.service', ['run']], ['node-image-overlay.service', ['run', '--no-isolate']]] as const) {
    it(`${name}: retries transient failures forever, stops on permanent ones, mounts in the host namespace`, () => {
      const s = unit(name);
      expect(s.Service!.ExecStart).toEqual([['/usr/local/bin/node-image-pivot', ...args].join(' ')]);
      expect(s.Service!.Restart).toEqual(['on-failure']);
      expect(s.Unit!.StartLimitIntervalSec).toEqual(['0']);
      expect(words(s, 'Service', 'RestartPreventExitStatus').map(Number).sort())
        .toEqual([ExitCode.usage, ExitCode.verification, ExitCode.etcMerge].sort());
      expect(words(s, 'Unit', 'After')).toContain('network-online.target');
      expect(words(s, 'Unit', 'Wants')).toContain('network-online.target');
      expect(s.Service!.NotifyAccess).toEqual(['all']);
      // A stop signals the agent only; it finishes a mount step instead of losing its child.
      expect(s.Service!.KillMode).toEqual(['mixed']);
      for (const key of ['MountFlags', 'PrivateMounts', 'PrivateTmp', 'ProtectSystem', 'ProtectHome', 'RootDirectory', 'ReadOnlyPaths']) {
        expect(s.Service![key], `${key} would keep the /usr mount from the host`).toBeUndefined();
      }
    });
  }

  it('the pivot service survives its own isolate; the overlay service runs before the node services', () => {
    expect(unit('node-image-pivot.service').Unit!.IgnoreOnIsolate).toEqual(['yes']);
    const o = unit('node-image-overlay.service');
    expect(words(o, 'Unit', 'Before')).toEqual(expect.arrayContaining(['kubelet.service', 'crio.service', 'bootkube.service']));
    expect(o.Service!.Type).toEqual(['oneshot']);
  });

  // The script of ExecStopPost=/bin/sh -c '...', as systemd hands it to sh ($$ is a literal $).
  function stopPostScript(name: string): string {
    const value = unit(name).Service!.ExecStopPost![0]!;
    const m = /^\/bin\/sh -c '(.*)'$/.exec(value);
    expect(m, value).not.toBeNull();
    return m![1]!.replaceAll('$$', '$');
  }

  const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-m', 'true']).status === 0;
  it.skipIf(!canUnshare)('after a V8 crash under enforcing SELinux with allow_execmem off, ExecStopPost prints the cause and fix in one line', () => {
    for (const name of ['node-image-pivot.service', 'node-image-overlay.service']) {
      const script = stopPostScript(name);
      expect(() => execFileSync('dash', ['-n', '-c', script])).not.toThrow();
      // A stand-in selinuxfs over /sys/fs in a private mount namespace.
      const run = (status: string, enforce: string, execmem: string | undefined): string => execFileSync('unshare', ['-m', 'sh', '-c', [
        'mount -t tmpfs none /sys/fs', 'mkdir -p /sys/fs/selinux/booleans', `echo ${enforce} > /sys/fs/selinux/enforce`,
        ...(execmem === undefined ? [] : [`echo "${execmem} ${execmem}" > /sys/fs/selinux/booleans/allow_execmem`]),
        'EXIT_STATUS="$1" sh -c "$2"',
      ].join(' && '), 'sh', status, script], { encoding: 'utf8' });
      const denied = run('TRAP', '1', '0');
      expect(denied.split('\n').filter(Boolean)).toHaveLength(1);
      expect(denied).toMatch(/^<3>node-image-pivot: .*execmem.*allow_execmem is off.*Fix: setsebool -P allow_execmem on/);
      expect(run('TRAP', '1', '1')).toMatch(/crashed \(SIGTRAP\).*Fix: /);
      expect(run('TRAP', '0', '0')).toBe('');
      expect(run('1', '1', '0')).toBe('');
    }
  });

  it('the generator is POSIX sh (dash parses it)', () => {
    expect(() => execFileSync('dash', ['-n', join(UNITS_DIR, 'node-image-pivot-generator')])).not.toThrow();
  });
});
