// The staging-modes bench's pure parts: the ~90%-identical image plan (scripts/bench/delta-image.ts)
// and the acceptance verdicts (scripts/bench/staging-report.ts). The real pivots are the bench's.
import { linkSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DELTA90, planChanges, type TreeFile } from '../../scripts/bench/delta-image.ts';
import { stagingVerdicts, formatStagingModes, type ModeRow } from '../../scripts/bench/staging-report.ts';
import { treeBytes } from '../../scripts/bench/staging-modes.ts';
import { rng } from '../helpers/rng.ts';

const MiB = 1024 * 1024;

/** A booted-/usr-shaped list: data under usr/share, ELF under usr/lib and usr/bin, a man dir. */
function fakeTree(): TreeFile[] {
  const next = rng(3);
  const files: TreeFile[] = [];
  const dirs = ['usr/share/locale/de', 'usr/share/doc/bash', 'usr/share/doc/dash', 'usr/share/perl/5', 'usr/share/man/man1', 'usr/lib/x86_64-linux-gnu', 'usr/bin', 'usr/lib/systemd'];
  for (let i = 0; i < 4000; i++) {
    const dir = dirs[i % dirs.length]!;
    files.push({ path: `${dir}/f${i}`, size: Math.round(512 * 2 ** (next() * 11)), elf: !dir.startsWith('usr/share') });
  }
  return files;
}

describe('planChanges (the bench image)', () => {
  const files = fakeTree();
  const plan = planChanges(files, DELTA90);

  it('changes about 10% of the image /usr bytes, deterministically', () => {
    const identical = 1 - plan.changedBytes / plan.imageBytes;
    expect(identical).toBeGreaterThan(0.86);
    expect(identical).toBeLessThan(0.92);
    expect(planChanges([...files].reverse(), DELTA90)).toEqual(plan);
    expect(planChanges(files, { ...DELTA90, seed: 15 }).flip).not.toEqual(plan.flip);
  });

  it('flips bytes only in data files, grows only ELF files, never touches the removed dir, and no file twice', () => {
    const elf = new Set(files.filter((f) => f.elf).map((f) => f.path));
    expect(plan.flip.length).toBeGreaterThan(10);
    expect(plan.flip.every((p) => p.startsWith('usr/share/') && !elf.has(p))).toBe(true);
    expect(plan.grow.length).toBeGreaterThan(5);
    expect(plan.grow.every((g) => elf.has(g.path) && g.bytes > 0)).toBe(true);
    expect(plan.chmod).toHaveLength(DELTA90.chmodFiles);
    const touched = [...plan.flip, ...plan.grow.map((g) => g.path), ...plan.chmod, ...plan.add.map((a) => a.path)];
    expect(new Set(touched).size).toBe(touched.length);
    expect(touched.some((p) => p.startsWith('usr/share/man/'))).toBe(false);
    const removed = files.filter((f) => f.path.startsWith('usr/share/man/')).reduce((n, f) => n + f.size, 0);
    expect(plan.removedBytes).toBe(removed);
    const existing = new Set(files.map((f) => f.path));
    expect(plan.add.every((a) => !existing.has(a.path))).toBe(true);
  });
});

function row(over: Partial<ModeRow>): ModeRow {
  return {
    requested: 'full', ran: 'full', reason: 'staging is "full" in the config', round: 1, pullSeconds: 4, pivotSeconds: 8,
    heldBytes: 215 * MiB, peakStagingBytes: 287 * MiB, treeFileBytes: 200 * MiB, treeFiles: 6000, whiteouts: 0,
    factsUsedBytes: 215 * MiB, factsPeakRssBytes: 127 * MiB, expandedBytes: 200 * MiB, compressedBytes: 72 * MiB,
    polledPeakRssBytes: 128 * MiB, polledPeakAnonBytes: 60 * MiB, agentCpuSeconds: 5, delta: undefined, mountMode: 'bind', phases: {}, ...over,
  };
}

const delta = (over: Partial<ModeRow> = {}): ModeRow => row({
  requested: 'delta', ran: 'delta', reason: 'staging is "delta" in the config', heldBytes: 30 * MiB, treeFileBytes: 21 * MiB,
  factsPeakRssBytes: 120 * MiB, delta: { skippedBytes: 179 * MiB }, mountMode: 'overlay', ...over,
});

describe('stagingVerdicts', () => {
  it('passes a delta within every bound, judging RAM on the worst round', () => {
    const v = stagingVerdicts([row({}), delta(), row({ round: 2, pivotSeconds: 10 }), delta({ round: 2, pivotSeconds: 9 })]);
    expect(v.targets.map((t) => t.pass)).toEqual([true, true, true]);
    expect(v.delta?.factsDeltaMiB).toBe(21);
    expect(v.ratios.deltaOverFullBytes).toBe(0.105);
    expect(formatStagingModes(v, { identicalFraction: 0.896, imageBytes: 195 * MiB })).toMatch(/PASS {2}staging delta: RAM held/);
  });

  it('fails each bound it misses, with the numbers', () => {
    // 1.1 x 21 MiB + 32 MiB = 55.1 MiB: one round holding 60 MiB is a miss even if the other holds 30.
    const v = stagingVerdicts([row({}), delta(), row({ round: 2 }), delta({ round: 2, heldBytes: 60 * MiB, pivotSeconds: 12, factsPeakRssBytes: 140 * MiB })]);
    expect(v.targets.map((t) => t.pass)).toEqual([false, false, false]);
    expect(v.ratios.ramHeldOverBound).toBeCloseTo(60 / 55.1, 2);
    expect(v.ratios.pivotTime).toBe(1.25);
    expect(formatStagingModes(v, { identicalFraction: 0.9, imageBytes: 195 * MiB })).toMatch(/FAIL {2}staging delta: peak RSS/);
  });

  it('judges nothing when a delta round staged in full or did not say, and says so', () => {
    for (const ran of ['full', undefined]) {
      const v = stagingVerdicts([row({}), delta({ ran, heldBytes: 215 * MiB, treeFileBytes: 200 * MiB })]);
      expect(v.targets.every((t) => t.pass === 'n/a' && String(t.value).includes('did not stage a delta'))).toBe(true);
      expect(v.notes[0]).toMatch(/^delta round 1 staged/);
    }
    expect(stagingVerdicts([row({})]).targets.every((t) => t.pass === 'n/a')).toBe(true);
  });
});

describe('treeBytes', () => {
  it('counts each inode once', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nip-tree-bytes-'));
    try {
      mkdirSync(join(dir, 'usr/lib'), { recursive: true });
      writeFileSync(join(dir, 'usr/lib/a'), Buffer.alloc(1000));
      linkSync(join(dir, 'usr/lib/a'), join(dir, 'usr/b'));
      writeFileSync(join(dir, 'usr/c'), 'xyz');
      expect(treeBytes(dir)).toEqual({ bytes: 1003, files: 2, whiteouts: 0 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
