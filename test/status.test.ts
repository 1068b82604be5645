import { describe, expect, it } from 'vitest';
import { formatStatus } from '../src/commands/status.ts';
import type { PivotState } from '../src/state.ts';

const digest = 'sha256:' + 'd'.repeat(64);
const failed: PivotState = {
  version: 1, bootId: 'b', pid: 42, mode: 'isolate', startedAt: '2026-11-27T10:00:00.000Z', updatedAt: '2026-11-27T10:00:09.000Z',
  attempt: 3, result: 'failed',
  image: { reference: `quay.io/openshift/node@${digest}`, digest, releaseImage: 'quay.io/openshift/release:4.20' },
  phases: [
    { name: 'preflight', startedAt: '', result: 'done', seconds: 0.01 },
    { name: 'resolve', startedAt: '', result: 'done', seconds: 0.2 },
    { name: 'pull', startedAt: '', result: 'failed', seconds: 8.5 },
  ],
  error: { kind: 'network', message: 'x', fix: 'y', exitCode: 3, line: 'network: connect to quay.io:443 failed (ECONNREFUSED). Fix: check the proxy' },
};

describe('status for humans', () => {
  it('shows result, attempt, image once, each phase and the one-line cause with its fix', () => {
    const text = formatStatus({
      state: failed,
      systemd: { version: '252', systemState: 'starting', defaultTarget: 'node-image-pivot.target', virtualization: 'kvm' },
      units: [
        { unit: 'node-image-pivot.service', loadState: 'loaded', activeState: 'activating', subState: 'auto-restart', restarts: 2 },
        { unit: 'node-image-pivot.target', loadState: 'loaded', activeState: 'inactive', subState: 'dead' },
      ],
    });
    expect(text.split('\n')).toEqual([
      'pivot: failed, mode isolate, pid 42, attempt 3 this boot',
      `image: quay.io/openshift/node@${digest} (from quay.io/openshift/release:4.20)`,
      'started: 2026-11-27T10:00:00.000Z, updated: 2026-11-27T10:00:09.000Z',
      '  ✓ preflight  0.01 s',
      '  ✓ resolve    0.20 s',
      '  ✗ pull       8.50 s',
      'error: network: connect to quay.io:443 failed (ECONNREFUSED). Fix: check the proxy',
      'unit: node-image-pivot.service activating (auto-restart), restarted 2 times',
      'unit: node-image-pivot.target inactive (dead)',
      'systemd: 252, state starting, default target node-image-pivot.target',
    ]);
  });

  it('shows the ostree commit and image version a bootc image was staged with', () => {
    const done: PivotState = {
      ...failed, result: 'done', attempt: 1, error: undefined,
      phases: [{ name: 'pull', startedAt: '', result: 'done', seconds: 3, facts: { ostreeCommit: 'c'.repeat(64), imageVersion: '9.6.20260101-0', derivedLayers: 1 } }],
    };
    const lines = formatStatus({ state: done, systemd: { error: 'no bus' } }).split('\n');
    expect(lines[2]).toBe(`os: version 9.6.20260101-0, ostree commit ${'c'.repeat(64)}`);
    expect(formatStatus({ state: failed, systemd: { error: 'no bus' } })).not.toMatch(/^os: /m);
  });

  it('says which staging the pull used, what it holds and why', () => {
    const reason = 'staging "auto": the root lives in RAM (/run/ostree-live exists (a live ISO or PXE boot)), so only what differs from the booted /usr is staged';
    const done: PivotState = {
      ...failed, result: 'done', attempt: 1, error: undefined,
      phases: [{ name: 'pull', startedAt: '', result: 'done', seconds: 3, facts: { stagingMode: 'delta', stagingModeReason: reason, stagingUsedBytes: 22 * 1024 ** 2 } }],
    };
    expect(formatStatus({ state: done, systemd: { error: 'no bus' } }).split('\n')[2]).toBe(`staging: delta, 22 MiB in staging (${reason})`);
    // Before the pull decided (or a state file from an older agent) there is no such line.
    expect(formatStatus({ state: failed, systemd: { error: 'no bus' } })).not.toMatch(/^staging: /m);
  });

  it('says when nothing ran and when systemd cannot be reached', () => {
    expect(formatStatus({ state: null, systemd: { error: 'systemd: no bus' } })).toBe(
      'pivot: not run this boot (no state file)\nsystemd: unavailable: systemd: no bus');
  });
});
