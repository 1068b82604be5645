// src/systemd/manager.ts against a real dbus-daemon with a scripted fake systemd Manager
// (fake-systemd.ts): the races and failures the real one produces, made deterministic.
import { describe, expect, it } from 'vitest';
import type dbus from '@particle/dbus-next';
import { PivotError } from '../../src/errors.ts';
import { SystemdManager } from '../../src/systemd/manager.ts';
import { MATCH_RULE_LIMIT, useFakeSystemd } from './fake-systemd.ts';

const ctx = useFakeSystemd();

async function startAndWait(mode: 'replace' | 'isolate' = 'isolate', timeoutMs = 2000) {
  await ctx.mgr.subscribe();
  const job = await ctx.mgr.startUnit('multi-user.target', mode);
  return { job, removed: await ctx.mgr.waitForJob(job, timeoutMs) };
}

/** Match rules the ctx.bus holds for `conn`, from the daemon's own bookkeeping (Debug.Stats). */
async function matchRules(conn: SystemdManager): Promise<number> {
  const [stats] = await conn.call('GetConnectionStats', 's', [(conn.bus as unknown as { name: string }).name], 'org.freedesktop.DBus.Debug.Stats', '/org/freedesktop/DBus', 'org.freedesktop.DBus');
  return Number((stats as Record<string, dbus.Variant>).MatchRules!.value);
}

describe('SystemdManager jobs', () => {
  it('catches a JobRemoved that arrives before the StartUnit reply', async () => {
    ctx.fake.scripts.push({ order: 'signal-first', result: 'done' });
    const { job, removed } = await startAndWait();
    expect(removed).toMatchObject({ job, unit: 'multi-user.target', result: 'done' });
  });

  it('catches a JobRemoved that arrives after the reply', async () => {
    ctx.fake.scripts.push({ order: 'reply-first', result: 'done' });
    const { job, removed } = await startAndWait();
    expect(removed).toMatchObject({ job, result: 'done' });
  });

  it('matches on the job path, not the first JobRemoved (the isolate cancels the pivot target job)', async () => {
    ctx.fake.scripts.push({ order: 'signal-first', result: 'done', others: [{ unit: 'node-image-pivot.target', result: 'canceled' }] });
    const { removed } = await startAndWait();
    expect(removed.unit).toBe('multi-user.target');
    expect(removed.result).toBe('done');
  });

  it('reports failure results as they are', async () => {
    for (const result of ['failed', 'dependency', 'timeout', 'canceled', 'skipped', 'weird-new-result']) {
      ctx.fake.scripts.push({ result, order: result === 'timeout' ? 'signal-first' : 'reply-first' });
      expect((await startAndWait()).removed.result).toBe(result);
    }
  });

  it('times out on a job that never finishes, with a PivotError of kind systemd', async () => {
    ctx.fake.scripts.push({ silent: true });
    const err = await startAndWait('isolate', 200).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PivotError);
    expect(err).toMatchObject({ kind: 'systemd', message: expect.stringMatching(/did not finish within/) });
  });

  it('turns a refused StartUnit into a PivotError naming the unit and the fix', async () => {
    ctx.fake.scripts.push({ error: { name: 'org.freedesktop.systemd1.OnlyByDependency', text: 'Operation refused, unit may not be isolated.' } });
    await ctx.mgr.subscribe();
    const err = (await ctx.mgr.startUnit('node-image-pivot.target', 'isolate').catch((e: unknown) => e)) as PivotError;
    expect(err.kind).toBe('systemd');
    expect(err.message).toMatch(/StartUnit\(node-image-pivot\.target, isolate\).*OnlyByDependency.*may not be isolated/);
    expect(err.fix).toMatch(/AllowIsolate=yes/);
  });

  it('fails a pending wait at once when the ctx.bus goes away, and a call that gets no reply', async () => {
    ctx.fake.scripts.push({ silent: true });
    await ctx.mgr.subscribe();
    const job = await ctx.mgr.startUnit('multi-user.target', 'isolate');
    const pending = ctx.mgr.waitForJob(job, 60_000);
    await ctx.mgr.close();
    await expect(pending).rejects.toThrow(/closed while a job was pending/);
    ctx.mgr = await SystemdManager.connect(ctx.bus.address, { callTimeoutMs: 300 });
    ctx.fake.scripts.push({ delayMs: 2000 });
    await expect(ctx.mgr.startUnit('multi-user.target', 'replace')).rejects.toThrow(/no reply to StartUnit within/);
  });

  it('does not hoard signals of jobs nobody started', async () => {
    await ctx.mgr.subscribe();
    const stray = await SystemdManager.connect(ctx.bus.address);
    // Another client's job, signalled while we have nothing in flight.
    ctx.fake.scripts.push({ order: 'signal-first' });
    const strayJob = await stray.startUnit('other.service', 'replace');
    await stray.close();
    // A round trip on our connection: the bus delivers the fake's signal to us before this reply.
    await ctx.mgr.facts();
    const err = await ctx.mgr.waitForJob(strayJob, 100).catch((e: unknown) => e);
    expect(err).toMatchObject({ message: expect.stringMatching(/did not finish/) });
    // Positive control: the same early signal for a job we did start is kept and found.
    ctx.fake.scripts.push({ order: 'signal-first', result: 'done' });
    const { removed } = await startAndWait('replace');
    expect(removed.result).toBe('done');
  });
});

describe('SystemdManager facts and subscription hygiene', () => {
  it('reads version, state, default target and virtualization, and lists failed units', async () => {
    ctx.fake.props.SystemState = 'degraded';
    ctx.fake.defaultTarget = 'node-image-pivot.target';
    expect(await ctx.mgr.facts()).toEqual({ version: '252.39-1~deb12u2', systemState: 'degraded', defaultTarget: 'node-image-pivot.target', virtualization: 'systemd-nspawn' });
    ctx.fake.failed = [{ name: 'crio.service', activeState: 'failed', subState: 'failed' }];
    expect(await ctx.mgr.failedUnits()).toEqual([{ unit: 'crio.service', activeState: 'failed', subState: 'failed' }]);
    expect(ctx.fake.calls.find((c) => c.member === 'ListUnitsFiltered')?.body).toEqual([['failed']]);
  });

  it('subscribes once, and removes its match rule on unsubscribe (no leak towards the per-connection limit)', async () => {
    const base = await matchRules(ctx.mgr);
    await ctx.mgr.subscribe();
    await ctx.mgr.subscribe();
    expect(await matchRules(ctx.mgr)).toBe(base + 1);
    expect(ctx.fake.count('Subscribe')).toBe(1);
    await ctx.mgr.unsubscribe();
    expect(await matchRules(ctx.mgr)).toBe(base);
    expect(ctx.fake.count('Unsubscribe')).toBe(1);
    // Twice the bus's limit of subscribe/unsubscribe cycles on one connection: a leak would hit it.
    for (let i = 0; i < MATCH_RULE_LIMIT * 2; i++) {
      await ctx.mgr.subscribe();
      await ctx.mgr.unsubscribe();
    }
    expect(await matchRules(ctx.mgr)).toBe(base);
    await ctx.mgr.subscribe();
    ctx.fake.scripts.push({});
    expect((await ctx.mgr.waitForJob(await ctx.mgr.startUnit('multi-user.target', 'isolate'), 2000)).result).toBe('done');
  });

  it('close() unsubscribes before disconnecting', async () => {
    await ctx.mgr.subscribe();
    await ctx.mgr.close();
    expect(ctx.fake.count('Unsubscribe')).toBe(1);
    await ctx.mgr.close(); // idempotent
    ctx.mgr = await SystemdManager.connect(ctx.bus.address);
  });
});
