import { describe, expect, it } from 'vitest';
import { attemptNumber, decideSkip, isolateSkipReason, retryDelaySeconds, spaceShortfall } from '../src/pivot-rules.ts';
import type { PivotState } from '../src/state.ts';

const digest = 'sha256:' + 'b'.repeat(64);
function prior(over: Partial<PivotState> = {}): PivotState {
  return {
    version: 1, bootId: 'boot-1', pid: 1, mode: 'isolate', startedAt: '', updatedAt: '', result: 'done', phases: [],
    image: { reference: 'reg/node:4.20', digest }, ...over,
  };
}

describe('decideSkip', () => {
  const base = { skipIfPathExists: ['/usr/bin/oc'], existing: new Set<string>(), bootId: 'boot-1' };

  it('skips when a configured path exists, naming it', () => {
    const d = decideSkip({ ...base, existing: new Set(['/usr/bin/oc']), prior: undefined });
    expect(d).toEqual({ skip: true, kind: 'path-exists', reason: expect.stringContaining('/usr/bin/oc exists') });
  });

  it('skips a rerun this boot for the same configured image, before any network', () => {
    expect(decideSkip({ ...base, prior: prior(), configured: 'reg/node:4.20' }).skip).toBe(true);
    expect(decideSkip({ ...base, prior: prior(), configured: 'reg/node:4.21' }).skip).toBe(false);
  });

  it('after resolve, skips only on the same digest', () => {
    expect(decideSkip({ ...base, prior: prior(), digest })).toEqual({ skip: true, kind: 'already-pivoted', reason: `already pivoted this boot to ${digest}` });
    expect(decideSkip({ ...base, prior: prior(), digest: 'sha256:' + 'c'.repeat(64) }).skip).toBe(false);
  });

  it('does not skip after a reboot, a failure, or a path-based skip', () => {
    expect(decideSkip({ ...base, prior: prior({ bootId: 'boot-0' }), digest }).skip).toBe(false);
    expect(decideSkip({ ...base, prior: prior({ result: 'failed' }), digest }).skip).toBe(false);
    expect(decideSkip({ ...base, prior: prior({ result: 'skipped', skipKind: 'path-exists', skipReason: 'skipIfPathExists: x' }), digest }).skip).toBe(false);
    expect(decideSkip({ ...base, prior: prior({ result: 'skipped', skipKind: 'already-pivoted', skipReason: 'already pivoted this boot to x' }), digest }).skip).toBe(true);
  });

  it('matches a release image config against the recorded release image', () => {
    const p = prior({ image: { reference: 'reg/node@' + digest, digest, releaseImage: 'reg/release:4.20' } });
    expect(decideSkip({ ...base, prior: p, configured: 'reg/release:4.20' }).skip).toBe(true);
  });
});

describe('spaceShortfall', () => {
  it('gives the numbers when staging is too small', () => {
    expect(spaceShortfall(1024 ** 3, 512 * 1024 ** 2, 3)).toBe(
      'staging needs 1536 MiB (512 MiB compressed x spaceFactor 3) but only 1024 MiB is free');
    expect(spaceShortfall(2 * 1024 ** 3, 512 * 1024 ** 2, 3)).toBeUndefined();
    // Staging in RAM says where the room went.
    expect(spaceShortfall(1024 ** 3, 512 * 1024 ** 2, 3, true)).toMatch(/is free in RAM \(MemAvailable minus stagingReserveMiB, or the tmpfs cap\)$/);
  });
});

describe('retries', () => {
  it('counts attempts within a boot while runs keep failing', () => {
    expect(attemptNumber(undefined, 'boot-1')).toBe(1);
    expect(attemptNumber(prior({ result: 'failed', attempt: 3 }), 'boot-1')).toBe(4);
    expect(attemptNumber(prior({ result: 'failed' }), 'boot-1')).toBe(2);
    expect(attemptNumber(prior({ result: 'failed', attempt: 3 }), 'boot-2')).toBe(1);
    expect(attemptNumber(prior({ result: 'done', attempt: 3 }), 'boot-1')).toBe(1);
  });

  it('backs off exponentially on top of RestartSec, capped', () => {
    const totals = [1, 2, 3, 4, 5, 6, 7, 8].map((a) => retryDelaySeconds(a, 300) + (a > 1 ? 15 : 0));
    expect(totals).toEqual([0, 15, 30, 60, 120, 240, 300, 300]);
    expect(retryDelaySeconds(9, 0)).toBe(0);
    expect(retryDelaySeconds(9, 60)).toBe(45);
  });
});

describe('isolateSkipReason', () => {
  it('isolates only while the boot still sits in the pivot target, or the target is not up', () => {
    expect(isolateSkipReason('multi-user.target', { target: 'active', pivotTarget: 'inactive' })).toBe('multi-user.target is already active');
    expect(isolateSkipReason('multi-user.target', { target: 'active', pivotTarget: 'active' })).toBeUndefined();
    expect(isolateSkipReason('multi-user.target', { target: 'inactive', pivotTarget: 'inactive' })).toBeUndefined();
    expect(isolateSkipReason('multi-user.target', { target: 'activating', pivotTarget: 'active' })).toBeUndefined();
  });
});
