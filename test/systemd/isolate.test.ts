// isolate() and refreshSystemd() against the scripted fake Manager on a private dbus-daemon.
import { describe, expect, it } from 'vitest';
import { PivotError } from '../../src/errors.ts';
import { resetFailpoints } from '../../src/failpoints.ts';
import { isolate, refreshSystemd, type RunCommand } from '../../src/systemd/isolate.ts';
import { useFakeSystemd } from './fake-systemd.ts';

const ctx = useFakeSystemd(() => {
  delete process.env.NODE_IMAGE_PIVOT_FAILPOINTS;
  resetFailpoints();
});

describe('isolate', () => {
  it('subscribes before StartUnit(target, isolate) and waits for that job, ignoring the canceled pivot target', async () => {
    ctx.fake.scripts.push({ order: 'signal-first', others: [{ unit: 'node-image-pivot.target', result: 'canceled' }] });
    const r = await isolate(ctx.mgr, 'multi-user.target', 2000);
    expect(r).toMatchObject({ target: 'multi-user.target', result: 'done', failedUnits: [] });
    const members = ctx.fake.calls.map((c) => c.member);
    expect(members.indexOf('Subscribe')).toBeLessThan(members.indexOf('StartUnit'));
    expect(ctx.fake.calls.find((c) => c.member === 'StartUnit')?.body).toEqual(['multi-user.target', 'isolate']);
  });

  it('fails with the job result and the failed units when the job is not done', async () => {
    ctx.fake.scripts.push({ result: 'dependency' });
    ctx.fake.failed = [{ name: 'crio.service', activeState: 'failed', subState: 'failed' }, { name: 'kubelet.service', activeState: 'failed', subState: 'failed' }];
    const err = (await isolate(ctx.mgr, 'multi-user.target', 2000).catch((e: unknown) => e)) as PivotError;
    expect(err).toBeInstanceOf(PivotError);
    expect(err.kind).toBe('systemd');
    expect(err.message).toBe('isolating to multi-user.target ended "dependency"; failed units: crio.service, kubelet.service');
    expect(err.fix).toMatch(/journalctl -b -u crio\.service/);
    expect(err.facts).toMatchObject({ result: 'dependency', failedUnits: ['crio.service', 'kubelet.service'] });
  });

  it('treats an unknown result as a failure and a silent job as a timeout', async () => {
    ctx.fake.scripts.push({ result: 'frobnicated' });
    await expect(isolate(ctx.mgr, 'multi-user.target', 2000)).rejects.toThrow(/ended "frobnicated"; failed units: none/);
    ctx.fake.scripts.push({ silent: true });
    await expect(isolate(ctx.mgr, 'multi-user.target', 200)).rejects.toThrow(/did not finish within/);
  });

  it('stops at the systemd.isolate.start failpoint before queuing anything', async () => {
    process.env.NODE_IMAGE_PIVOT_FAILPOINTS = 'systemd.isolate.start:error=systemd';
    resetFailpoints();
    await expect(isolate(ctx.mgr, 'multi-user.target', 2000)).rejects.toThrow(/failpoint systemd.isolate.start/);
    expect(ctx.fake.count('StartUnit')).toBe(0);
  });
});

describe('refreshSystemd', () => {
  function recorder(results: Record<string, { exitCode: number; stderr?: string }> = {}) {
    const ran: string[] = [];
    const run: RunCommand = async (file, args) => {
      ran.push([file, ...args].join(' '));
      const r = results[file] ?? { exitCode: 0 };
      return { exitCode: r.exitCode, stderr: r.stderr ?? '' };
    };
    return { ran, run };
  }

  it('reloads, then sysusers, then tmpfiles, then try-restarts each unit and waits for its job', async () => {
    const { ran, run } = recorder();
    ctx.fake.scripts.push({ order: 'signal-first' }, {});
    const r = await refreshSystemd(ctx.mgr, { restartUnits: ['sshd.service', 'chronyd.service'], run });
    expect(ran).toEqual(['systemd-sysusers', 'systemd-tmpfiles --create']);
    expect(ctx.fake.calls.map((c) => c.member).filter((m) => m !== 'Subscribe')).toEqual(['Reload', 'TryRestartUnit', 'TryRestartUnit']);
    expect(r.restarted).toEqual({ 'sshd.service': 'done', 'chronyd.service': 'done' });
    expect(r.warnings).toEqual([]);
  });

  it('skips units that do not exist, and fails on a restart that does not end done', async () => {
    const { run } = recorder();
    ctx.fake.scripts.push({ error: { name: 'org.freedesktop.systemd1.NoSuchUnit', text: 'Unit sshd.service not found.' } }, { result: 'failed' });
    const err = (await refreshSystemd(ctx.mgr, { restartUnits: ['sshd.service', 'crio.service'], run }).catch((e: unknown) => e)) as PivotError;
    expect(err.message).toBe('try-restart of crio.service ended "failed"');
    expect(err.fix).toMatch(/journalctl -b -u crio\.service/);
  });

  it('decides "no such unit" by the D-Bus error name, not by words in the text', async () => {
    const { run } = recorder();
    ctx.fake.scripts.push({ error: { name: 'org.freedesktop.systemd1.LoadFailed', text: 'Unit crio.service not found in any path, failed to load.' } });
    const err = (await refreshSystemd(ctx.mgr, { restartUnits: ['crio.service'], run }).catch((e: unknown) => e)) as PivotError;
    expect(err).toMatchObject({ kind: 'systemd', dbusName: 'org.freedesktop.systemd1.LoadFailed', facts: { dbusError: 'org.freedesktop.systemd1.LoadFailed' } });
    ctx.fake.scripts.push({ error: { name: 'org.freedesktop.systemd1.NoSuchUnit', text: 'no words to match here' } });
    expect((await refreshSystemd(ctx.mgr, { restartUnits: ['gone.service'], run })).restarted).toEqual({ 'gone.service': 'not-found' });
  });

  it('fails on sysusers (users are needed) but only warns on tmpfiles (partial by nature)', async () => {
    const warn = recorder({ 'systemd-tmpfiles': { exitCode: 65, stderr: '/usr/lib/tmpfiles.d/x.conf:3: Unknown user "nope".\nmore' } });
    const r = await refreshSystemd(ctx.mgr, { restartUnits: [], run: warn.run });
    expect(r.warnings).toEqual(['systemd-tmpfiles --create exited 65: /usr/lib/tmpfiles.d/x.conf:3: Unknown user "nope".']);

    const bad = recorder({ 'systemd-sysusers': { exitCode: 1, stderr: 'Failed to parse line 4' } });
    await expect(refreshSystemd(ctx.mgr, { restartUnits: ['sshd.service'], run: bad.run })).rejects.toThrow(/systemd-sysusers failed with exit 1: Failed to parse line 4/);
    expect(bad.ran).toEqual(['systemd-sysusers']);
    expect(ctx.fake.count('TryRestartUnit')).toBe(0);
  });

  it('reports a refused Reload as a systemd error and runs nothing after it', async () => {
    const { ran, run } = recorder();
    ctx.fake.reloadError = { name: 'org.freedesktop.DBus.Error.AccessDenied', text: 'Access denied' };
    await expect(refreshSystemd(ctx.mgr, { restartUnits: ['sshd.service'], run })).rejects.toThrow(/systemd daemon-reload failed: .*AccessDenied/);
    expect(ran).toEqual([]);
  });
});
