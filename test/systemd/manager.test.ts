// src/systemd/manager.ts against a real dbus-daemon with a scripted fake systemd Manager
// (fake-systemd.ts): the races and failures the real one produces, made deterministic.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type dbus from '@particle/dbus-next';
import { PivotError } from '../../src/errors.ts';
import { SystemdManager } from '../../src/systemd/manager.ts';
import { FakeSystemd, MATCH_RULE_LIMIT, startPrivateBus, type PrivateBus } from './fake-systemd.ts';

let bus: PrivateBus;
let fake: FakeSystemd;
let mgr: SystemdManager;

beforeAll(() => {
  bus = startPrivateBus();
});
afterAll(() => bus.stop());

beforeEach(async () => {
  fake = await FakeSystemd.start(bus.address);
  mgr = await SystemdManager.connect(bus.address, { callTimeoutMs: 2000 });
});
afterEach(async () => {
  await mgr.close();
  fake.stop();
});

async function startAndWait(mode: 'replace' | 'isolate' = 'isolate', timeoutMs = 2000) {
  await mgr.subscribe();
  const job = await mgr.startUnit('multi-user.target', mode);
  return { job, removed: await mgr.waitForJob(job, timeoutMs) };
}

/** Match rules the bus holds for `conn`, from the daemon's own bookkeeping (Debug.Stats). */
async function matchRules(conn: SystemdManager): Promise<number> {
  const [stats] = await conn.call('GetConnectionStats', 's', [(conn.bus as unknown as { name: string }).name], 'org.freedesktop.DBus.Debug.Stats', '/org/freedesktop/DBus', 'org.freedesktop.DBus');
  return Number((stats as Record<string, dbus.Variant>).MatchRules!.value);
}

describe('SystemdManager jobs', () => {
  it('catches a JobRemoved that arrives before the StartUnit reply', async () => {
    fake.scripts.push({ order: 'signal-first', result: 'done' });
    const { job, removed } = await startAndWait();
    expect(removed).toMatchObject({ job, unit: 'multi-user.target', result: 'done' });
  });

  it('catches a JobRemoved that arrives after the reply', async () => {
    fake.scripts.push({ order: 'reply-first', result: 'done' });
    const { job, removed } = await startAndWait();
    expect(removed).toMatchObject({ job, result: 'done' });
  });

  it('matches on the job path, not the first JobRemoved (the isolate cancels the pivot target job)', async () => {
    fake.scripts.push({ order: 'signal-first', result: 'done', others: [{ unit: 'node-image-pivot.target', result: 'canceled' }] });
    const { removed } = await startAndWait();
    expect(removed.unit).toBe('multi-user.target');
    expect(removed.result).toBe('done');
  });

  it('reports failure results as they are', async () => {
    for (const result of ['failed', 'dependency', 'timeout', 'canceled', 'skipped', 'weird-new-result']) {
      fake.scripts.push({ result, order: result === 'timeout' ? 'signal-first' : 'reply-first' });
      expect((await startAndWait()).removed.result).toBe(result);
    }
  });

  it('times out on a job that never finishes, with a PivotError of kind systemd', async () => {
    fake.scripts.push({ silent: true });
    const err = await startAndWait('isolate', 200).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PivotError);
    expect(err).toMatchObject({ kind: 'systemd', message: expect.stringMatching(/did not finish within/) });
  });

  it('turns a refused StartUnit into a PivotError naming the unit and the fix', async () => {
    fake.scripts.push({ error: { name: 'org.freedesktop.systemd1.OnlyByDependency', text: 'Operation refused, unit may not be isolated.' } });
    await mgr.subscribe();
    const err = (await mgr.startUnit('node-image-pivot.target', 'isolate').catch((e: unknown) => e)) as PivotError;
    expect(err.kind).toBe('systemd');
    expect(err.message).toMatch(/StartUnit\(node-image-pivot\.target, isolate\).*OnlyByDependency.*may not be isolated/);
    expect(err.fix).toMatch(/AllowIsolate=yes/);
  });

  it('fails a pending wait at once when the bus goes away, and a call that gets no reply', async () => {
    fake.scripts.push({ silent: true });
    await mgr.subscribe();
    const job = await mgr.startUnit('multi-user.target', 'isolate');
    const pending = mgr.waitForJob(job, 60_000);
    await mgr.close();
    await expect(pending).rejects.toThrow(/closed while a job was pending/);
    mgr = await SystemdManager.connect(bus.address, { callTimeoutMs: 300 });
    fake.scripts.push({ delayMs: 2000 });
    await expect(mgr.startUnit('multi-user.target', 'replace')).rejects.toThrow(/no reply to StartUnit within/);
  });

  it('does not hoard signals of jobs nobody started', async () => {
    await mgr.subscribe();
    const stray = await SystemdManager.connect(bus.address);
    // Another client's job, signalled while we have nothing in flight.
    fake.scripts.push({ order: 'signal-first' });
    const strayJob = await stray.startUnit('other.service', 'replace');
    await stray.close();
    await new Promise((r) => setTimeout(r, 50));
    const err = await mgr.waitForJob(strayJob, 100).catch((e: unknown) => e);
    expect(err).toMatchObject({ message: expect.stringMatching(/did not finish/) });
  });
});

describe('SystemdManager facts and subscription hygiene', () => {
  it('reads version, state, default target and virtualization, and lists failed units', async () => {
    fake.props.SystemState = 'degraded';
    fake.defaultTarget = 'node-image-pivot.target';
    expect(await mgr.facts()).toEqual({ version: '252.39-1~deb12u2', systemState: 'degraded', defaultTarget: 'node-image-pivot.target', virtualization: 'systemd-nspawn' });
    fake.failed = [{ name: 'crio.service', activeState: 'failed', subState: 'failed' }];
    expect(await mgr.failedUnits()).toEqual([{ unit: 'crio.service', activeState: 'failed', subState: 'failed' }]);
    expect(fake.calls.find((c) => c.member === 'ListUnitsFiltered')?.body).toEqual([['failed']]);
  });

  it('subscribes once, and removes its match rule on unsubscribe (no leak towards the per-connection limit)', async () => {
    const base = await matchRules(mgr);
    await mgr.subscribe();
    await mgr.subscribe();
    expect(await matchRules(mgr)).toBe(base + 1);
    expect(fake.count('Subscribe')).toBe(1);
    await mgr.unsubscribe();
    expect(await matchRules(mgr)).toBe(base);
    expect(fake.count('Unsubscribe')).toBe(1);
    // Twice the bus's limit of subscribe/unsubscribe cycles on one connection: a leak would hit it.
    for (let i = 0; i < MATCH_RULE_LIMIT * 2; i++) {
      await mgr.subscribe();
      await mgr.unsubscribe();
    }
    expect(await matchRules(mgr)).toBe(base);
    await mgr.subscribe();
    fake.scripts.push({});
    expect((await mgr.waitForJob(await mgr.startUnit('multi-user.target', 'isolate'), 2000)).result).toBe('done');
  });

  it('close() unsubscribes before disconnecting', async () => {
    await mgr.subscribe();
    await mgr.close();
    expect(fake.count('Unsubscribe')).toBe(1);
    await mgr.close(); // idempotent
    mgr = await SystemdManager.connect(bus.address);
  });
});
