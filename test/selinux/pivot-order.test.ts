// Where phase selinux sits in the pivot and what a failure after it undoes, with recording
// capabilities (the real ones are exercised by the VM suite under an enforcing kernel).
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config.ts';
import { PivotError } from '../../src/errors.ts';
import { runPivot, type PivotCapabilities } from '../../src/pivot.ts';
import { Progress } from '../../src/progress.ts';

let dir: string;
beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'nip-order-')); });
afterEach(() => { rmSync(dir, { recursive: true, force: true }); });

function recordingCaps(failAt?: 'mount' | 'etc-apply'): { caps: PivotCapabilities; calls: string[] } {
  const calls: string[] = [];
  const step = (name: string): void => {
    calls.push(name);
    if (name === failAt) throw new PivotError('mount', `${name} failed`, { fix: 'test' });
  };
  const caps: PivotCapabilities = {
    stagedPath: (_cfg, digest) => join(dir, 'staging', digest),
    pendingEtcJournal: () => 'none',
    recoverMounts: async () => [],
    recoverEtc: async () => 'none',
    resolve: async () => ({ reference: 'r/n:1', manifestDigest: 'sha256:' + 'a'.repeat(64), compressedBytes: 1, layerCount: 1 }),
    pull: async (cfg) => { calls.push('pull'); return { root: join(cfg.stagingDir, 'x'), reused: false, facts: {} }; },
    planEtc: async () => { calls.push('etc-plan'); return { plan: {}, summary: { actions: 0, counts: {}, warnings: [], conflicts: [], text: '' } }; },
    label: async () => { calls.push('selinux'); return { facts: { policyLoaded: true }, undo: async () => { calls.push('undo-policy'); } }; },
    prepareStaging: async () => ({ freeBytes: 2 ** 40, facts: { filesystem: 'disk', inRam: false, reason: 'test' } }),
    usrIsPivotedTo: async () => false,
    mountUsr: async () => { step('mount'); return { undo: async () => { calls.push('undo-mount'); }, facts: {} }; },
    applyEtc: async () => { step('etc-apply'); return {}; },
    refresh: async () => { calls.push('refresh'); return {}; },
    isolate: async () => ({}),
    settle: async () => undefined,
  };
  return { caps, calls };
}

function request(caps: PivotCapabilities, dryRun = false): Parameters<typeof runPivot>[0] {
  const cfg = parseConfig({ image: 'r/n:1', stateDir: join(dir, 'state'), stagingDir: join(dir, 'staging') }, 'test');
  return { cfg, caps, isolate: false, dryRun, progress: new Progress({ notify: async () => true, tty: false }) };
}

describe('phase selinux in the pivot', () => {
  it('comes after the /etc plan (a conflict stops before any policy load) and before the mount', async () => {
    const { caps, calls } = recordingCaps();
    await runPivot(request(caps));
    expect(calls).toEqual(['pull', 'etc-plan', 'selinux', 'mount', 'etc-apply', 'refresh']);
  });

  it('a dry run never loads a policy or labels', async () => {
    const { caps, calls } = recordingCaps();
    await runPivot(request(caps, true));
    expect(calls).toEqual(['pull', 'etc-plan']);
  });

  for (const failAt of ['mount', 'etc-apply'] as const) {
    it(`a failure in ${failAt} puts the booted policy back, after the booted /usr`, async () => {
      const { caps, calls } = recordingCaps(failAt);
      await expect(runPivot(request(caps))).rejects.toThrow(`${failAt} failed`);
      expect(calls.slice(calls.indexOf(failAt))).toEqual(failAt === 'mount' ? ['mount', 'undo-policy'] : ['etc-apply', 'undo-mount', 'undo-policy']);
    });
  }
});
