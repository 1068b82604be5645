// Smoke e2e (issue 2, item 7): the single executable, copied alone into a real systemd machine
// with no Node and no node_modules, answers `status --json` with facts it read from the guest's
// systemd over D-Bus.
import { mkdirSync, writeFileSync, symlinkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootMachine, type Machine } from '../helpers/machine.ts';

// A default target the rootfs does not have: if status reports it, it came from this systemd.
const SMOKE_TARGET = 'nip-smoke.target';

describe('smoke: the binary inside a real systemd machine', () => {
  let m: Machine;

  beforeAll(async () => {
    m = await bootMachine({
      name: 'nip-smoke',
      prepare: (root) => {
        writeFileSync(join(root, 'etc/systemd/system', SMOKE_TARGET),
          '[Unit]\nDescription=smoke default target\nRequires=multi-user.target\nAfter=multi-user.target\nAllowIsolate=yes\n');
        rmSync(join(root, 'etc/systemd/system/default.target'), { force: true });
        symlinkSync(`/etc/systemd/system/${SMOKE_TARGET}`, join(root, 'etc/systemd/system/default.target'));
        mkdirSync(join(root, 'etc/node-image-pivot'), { recursive: true });
      },
    });
    await m.waitForSystemState('running');
  });

  afterAll(async () => {
    await m?.dispose();
  });

  it('runs alone: no node and no node_modules in the guest', async () => {
    expect((await m.exec(['sh', '-c', 'command -v node || echo none'])).stdout.trim()).toBe('none');
    expect((await m.exec(['ls', '-A', '/usr/local/bin/'])).stdout.trim()).toBe('node-image-pivot');
    expect((await m.exec(['sh', '-c', 'ls -d /usr/local/bin/node_modules /var/usrlocal/node_modules 2>/dev/null; true'])).stdout).toBe('');
  });

  it('--version reports the tool and the embedded Node 24', async () => {
    const r = await m.exec(['node-image-pivot', '--version']);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/^node-image-pivot \d+\.\d+\.\d+ \(node 24\.\d+\.\d+, linux\/x64\)\n$/);
  });

  it('status --json reads version, system state and default target from systemd over D-Bus', async () => {
    const r = await m.exec(['node-image-pivot', 'status', '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as { state: unknown; systemd: Record<string, string> };
    // The guest's systemd binary, asked without D-Bus: "systemd 252 (252.39-1~deb12u2)".
    const banner = (await m.exec(['/lib/systemd/systemd', '--version'])).stdout.split('\n')[0]!;
    const full = /\(([^)]+)\)/.exec(banner)?.[1];
    expect(full).toMatch(/^252\./);
    expect(report.systemd).toEqual({
      version: full,
      systemState: 'running',
      defaultTarget: SMOKE_TARGET,
      virtualization: 'systemd-nspawn',
    });
    expect(report.state).toBeNull();
  });

  it('status reports a state change the agent did not cause (degraded)', async () => {
    const failed = await m.exec(['systemd-run', '--unit=nip-smoke-fail', '--wait', '-q', 'false'], { direct: true });
    expect(failed.exitCode).not.toBe(0);
    const r = await m.exec(['node-image-pivot', 'status', '--json']);
    expect((JSON.parse(r.stdout) as { systemd: { systemState: string } }).systemd.systemState).toBe('degraded');
    await m.exec(['systemctl', 'reset-failed'], { direct: true });
  });
});
