// The correctness oracle on seeded random trees, with real overlayfs: overlay(delta over booted)
// must digest exactly like the full staging of the same layers. Everything happens on a tmpfs
// inside `unshare -m`, never on the host's /usr.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const child = join(import.meta.dirname, 'fixtures', 'oracle-child.ts');
const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-m', '--propagation', 'private', 'true']).status === 0;
const base = mkdtempSync(join(tmpdir(), 'nip-delta-oracle-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

interface Report {
  full: string; merged: string; diff: string[]; entries: number; fullBytes: number; deltaBytes: number; relabelled: number;
  stats: { skipped: number; materialized: number; whiteouts: number; opaqueDirs: number; contentCompared: number };
}

function runCase(seed: number, size: number, labels: false | 'stream' | 'late' = false): Report {
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', process.execPath, child, JSON.stringify({ seed, base, size, labels })], {
    encoding: 'utf8', env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' },
  });
  if (r.status !== 0) throw new Error(`oracle child failed (${String(r.status)}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Report;
}

describe.skipIf(!canUnshare)('delta staging oracle (random trees, real overlayfs)', () => {
  const totals = { skipped: 0, materialized: 0, whiteouts: 0, opaqueDirs: 0 };
  it.each([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 129, 130])('seed %i: overlay(delta over booted) equals the full tree', (seed) => {
    const r = runCase(seed, 120);
    expect(r.diff).toEqual([]);
    expect(r.merged).toBe(r.full);
    // The delta really leaves things out: most of the tree is shared by construction.
    expect(r.stats.skipped).toBeGreaterThan(r.entries / 4);
    expect(r.deltaBytes).toBeLessThan(r.fullBytes);
    for (const k of Object.keys(totals) as Array<keyof typeof totals>) totals[k] += r.stats[k];
  });

  it.each([11, 12, 13])('seed %i with labels: a path whose booted label differs from the new policy\'s is staged', (seed) => {
    const r = runCase(seed, 120, 'stream');
    expect(r.diff).toEqual([]);
    expect(r.merged).toBe(r.full);
    expect(r.stats.skipped).toBeGreaterThan(r.entries / 5);
    for (const k of Object.keys(totals) as Array<keyof typeof totals>) totals[k] += r.stats[k];
  });

  it.each([21, 22, 23])('seed %i with labels known only after the unpack: stageRelabelled makes the same tree', (seed) => {
    const r = runCase(seed, 120, 'late');
    expect(r.diff).toEqual([]);
    expect(r.merged).toBe(r.full);
    expect(r.relabelled).toBeGreaterThan(0);
    expect(r.stats.skipped).toBeGreaterThan(r.entries / 4);
  });

  it('the seeds together exercise every kind of delta mark', () => {
    expect(totals.materialized).toBeGreaterThan(0);
    expect(totals.whiteouts).toBeGreaterThan(0);
    expect(totals.opaqueDirs).toBeGreaterThan(0);
  });
});
