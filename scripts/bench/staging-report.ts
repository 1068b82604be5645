// PURE: the staging-modes bench's rows (one real pivot each, scripts/bench/staging-modes.ts)
// turned into per-mode medians and the acceptance ratios of issue 14, part 5:
//   delta RAM held        <= 1.1 x the delta's expanded bytes + 32 MiB
//   delta pivot wall time <= 1.2 x full's, same image
//   delta peak RSS        <= full's
import { median, type Verdict } from './report.ts';

export type Mode = 'full' | 'delta';
const MiB = 1024 * 1024;

export interface ModeRow {
  /** What the config asked for, and what the pull phase's facts say ran (undefined: not reported). */
  requested: Mode;
  ran: string | undefined;
  reason: string | undefined;
  round: number;
  pullSeconds: number;
  /** First phase's start to the last phase's end (preflight .. isolate). */
  pivotSeconds: number;
  /** statfs of the staging tmpfs once the pivot is done: what staging keeps in RAM. */
  heldBytes: number;
  /** Highest statfs reading while the pivot ran (the blob cache and the tree together). */
  peakStagingBytes: number;
  /** Regular-file bytes (each inode once) in the staged tree: the delta's or the full tree's expanded bytes. */
  treeFileBytes: number;
  treeFiles: number;
  whiteouts: number;
  /** The pull phase's facts: stagingUsedBytes, peakRssBytes, expandedBytes, compressedBytes. */
  factsUsedBytes: number | undefined;
  factsPeakRssBytes: number | undefined;
  expandedBytes: number | undefined;
  compressedBytes: number | undefined;
  /** The agent's VmHWM polled from the host over the whole run (every process of it, max). */
  polledPeakRssBytes: number | undefined;
  polledPeakAnonBytes: number | undefined;
  /** user+system seconds of the agent's processes over the run (polled; steadier than wall time on a loaded machine). */
  agentCpuSeconds: number | undefined;
  /** facts.pacedGc: the full collections paced by the bytes streamed (src/gc-pacer.ts), and their seconds. */
  pacedGc?: { collections: number; seconds: number };
  /** facts.delta in delta mode. */
  delta: Record<string, unknown> | undefined;
  mountMode: string | undefined;
  phases: Record<string, number | undefined>;
}

export interface ModeSummary {
  rounds: number;
  ran: string[];
  pullSeconds: number[];
  pivotSeconds: number[];
  median: {
    pullSeconds: number; pivotSeconds: number; heldMiB: number; peakStagingMiB: number; treeFileMiB: number;
    peakRssMiB: number | undefined; polledPeakRssMiB: number | undefined; peakAnonMiB: number | undefined; cpuSeconds: number | undefined;
  };
  peakRssMiB: Array<number | undefined>;
  maxHeldMiB: number;
  /** expandedBytes - delta.skippedBytes, when the facts have them. */
  factsDeltaMiB: number | undefined;
}

const r2 = (x: number): number => Math.round(x * 100) / 100;
const mib = (b: number): number => r2(b / MiB);
const num = (x: unknown): number | undefined => (typeof x === 'number' && Number.isFinite(x) ? x : undefined);
const medianOf = (xs: Array<number | undefined>): number | undefined => {
  const v = xs.filter((x): x is number => x !== undefined);
  return v.length ? median(v) : undefined;
};

export function summariseMode(rows: readonly ModeRow[]): ModeSummary | undefined {
  if (!rows.length) return undefined;
  const skipped = rows.map((r) => (r.expandedBytes !== undefined && num(r.delta?.skippedBytes) !== undefined ? r.expandedBytes - num(r.delta?.skippedBytes)! : undefined));
  const rss = medianOf(rows.map((r) => r.factsPeakRssBytes));
  const polled = medianOf(rows.map((r) => r.polledPeakRssBytes));
  const anon = medianOf(rows.map((r) => r.polledPeakAnonBytes));
  const cpu = medianOf(rows.map((r) => r.agentCpuSeconds));
  const fd = medianOf(skipped);
  return {
    rounds: rows.length,
    ran: rows.map((r) => r.ran ?? 'unreported'),
    pullSeconds: rows.map((r) => r2(r.pullSeconds)),
    pivotSeconds: rows.map((r) => r2(r.pivotSeconds)),
    median: {
      pullSeconds: r2(median(rows.map((r) => r.pullSeconds))),
      pivotSeconds: r2(median(rows.map((r) => r.pivotSeconds))),
      heldMiB: mib(median(rows.map((r) => r.heldBytes))),
      peakStagingMiB: mib(median(rows.map((r) => r.peakStagingBytes))),
      treeFileMiB: mib(median(rows.map((r) => r.treeFileBytes))),
      peakRssMiB: rss === undefined ? undefined : mib(rss),
      polledPeakRssMiB: polled === undefined ? undefined : mib(polled),
      peakAnonMiB: anon === undefined ? undefined : mib(anon),
      cpuSeconds: cpu === undefined ? undefined : r2(cpu),
    },
    peakRssMiB: rows.map((r) => (r.factsPeakRssBytes === undefined ? undefined : Math.round(r.factsPeakRssBytes / MiB))),
    maxHeldMiB: mib(Math.max(...rows.map((r) => r.heldBytes))),
    factsDeltaMiB: fd === undefined ? undefined : mib(fd),
  };
}

export interface StagingModesVerdicts {
  full: ModeSummary | undefined;
  delta: ModeSummary | undefined;
  ratios: { ramHeldOverBound?: number; pivotTime?: number; pullTime?: number; peakRss?: number; peakAnon?: number; cpu?: number; deltaOverFullBytes?: number };
  targets: Verdict[];
  notes: string[];
}

/**
 * The three targets. They are judged only when every delta round really staged a delta (the pull
 * facts say stagingMode "delta"): a delta round that fell back to full is no evidence either way.
 * RAM uses the worst delta round; time and RSS the medians.
 */
export function stagingVerdicts(rows: readonly ModeRow[]): StagingModesVerdicts {
  const full = summariseMode(rows.filter((r) => r.requested === 'full'));
  const delta = summariseMode(rows.filter((r) => r.requested === 'delta'));
  const notes: string[] = [];
  const deltaRows = rows.filter((r) => r.requested === 'delta');
  const fell = deltaRows.filter((r) => r.ran !== 'delta');
  for (const r of fell) notes.push(`delta round ${r.round} staged ${r.ran ?? 'without saying which mode (no stagingMode in the pull facts)'}${r.reason ? `: ${r.reason}` : ''}`);
  for (const r of rows.filter((x) => x.requested === 'full' && x.ran !== undefined && x.ran !== 'full')) notes.push(`full round ${r.round} staged ${r.ran}`);
  const judged = deltaRows.length > 0 && fell.length === 0 && full !== undefined && delta !== undefined;
  const why = deltaRows.length === 0 ? 'no delta rounds' : fell.length ? 'the delta rounds did not stage a delta' : 'no full rounds';
  const ratios: StagingModesVerdicts['ratios'] = {};
  const targets: Verdict[] = [];
  const check = (target: string, value: number | undefined, ok: (v: number) => boolean): void => {
    targets.push({ target, value: judged ? value : `n/a (${why})`, pass: judged && value !== undefined ? ok(value) : 'n/a' });
  };
  if (full && delta) {
    // Worst delta round against its own bound.
    const worst = Math.max(...deltaRows.map((r) => r.heldBytes / (1.1 * r.treeFileBytes + 32 * MiB)));
    ratios.ramHeldOverBound = r2(worst);
    ratios.pivotTime = r2(delta.median.pivotSeconds / full.median.pivotSeconds);
    ratios.pullTime = r2(delta.median.pullSeconds / full.median.pullSeconds);
    if (delta.median.peakRssMiB !== undefined && full.median.peakRssMiB) ratios.peakRss = r2(delta.median.peakRssMiB / full.median.peakRssMiB);
    if (delta.median.peakAnonMiB !== undefined && full.median.peakAnonMiB) ratios.peakAnon = r2(delta.median.peakAnonMiB / full.median.peakAnonMiB);
    if (delta.median.cpuSeconds !== undefined && full.median.cpuSeconds) ratios.cpu = r2(delta.median.cpuSeconds / full.median.cpuSeconds);
    ratios.deltaOverFullBytes = Math.round((delta.median.treeFileMiB / full.median.treeFileMiB) * 1000) / 1000;
  }
  check('staging delta: RAM held / (1.1 x delta expanded bytes + 32 MiB) <= 1', ratios.ramHeldOverBound, (v) => v <= 1);
  check('staging delta: pivot wall time delta/full <= 1.2', ratios.pivotTime, (v) => v <= 1.2);
  check('staging delta: peak RSS delta/full <= 1', ratios.peakRss, (v) => v <= 1);
  return { full, delta, ratios, targets, notes };
}

/** The side-by-side table and the verdicts, PASS/FAIL, as the bench prints them. */
export function formatStagingModes(v: StagingModesVerdicts, image: { identicalFraction: number; imageBytes: number }): string {
  const lines = [`staging modes, one real pivot per round in an nspawn machine, /run tmpfs; node image /usr ${(image.identicalFraction * 100).toFixed(1)}% identical to the booted one (${mib(image.imageBytes)} MiB of files)`];
  const cols = ['mode', 'ran', 'pull s', 'pivot s', 'agent CPU s', 'held MiB', 'peak stage MiB', 'tree MiB', 'RSS MiB', 'RssAnon MiB'];
  const w = 15;
  lines.push(cols.map((c) => c.padEnd(w)).join(' '));
  for (const [name, s] of [['full', v.full], ['delta', v.delta]] as const) {
    if (!s) {
      lines.push(`${name.padEnd(w)} no rounds`);
      continue;
    }
    const m = s.median;
    lines.push([`${name} x${s.rounds}`, [...new Set(s.ran)].join('/'), m.pullSeconds, m.pivotSeconds, m.cpuSeconds ?? 'n/a',
      m.heldMiB, m.peakStagingMiB, m.treeFileMiB, m.peakRssMiB ?? 'n/a', m.peakAnonMiB ?? 'n/a'].map((c) => String(c).padEnd(w)).join(' '));
  }
  lines.push('(medians; RSS is the pull facts\' peakRssBytes, RssAnon and agent CPU are polled from the host)');
  for (const [name, s] of [['full', v.full], ['delta', v.delta]] as const) {
    if (s) lines.push(`${name} rounds: pull s [${s.pullSeconds.join(' ')}], pivot s [${s.pivotSeconds.join(' ')}], RSS MiB [${s.peakRssMiB.join(' ')}]`);
  }
  if (v.delta?.factsDeltaMiB !== undefined) lines.push(`delta expanded bytes from the facts (expandedBytes - delta.skippedBytes): ${v.delta.factsDeltaMiB} MiB`);
  lines.push(`ratios: ${JSON.stringify(v.ratios)}`);
  for (const t of v.targets) lines.push(`  ${t.pass === true ? 'PASS' : t.pass === false ? 'FAIL' : 'n/a '}  ${t.target}: ${t.value ?? 'n/a'}`);
  for (const n of v.notes) lines.push(`  note: ${n}`);
  return `${lines.join('\n')}\n`;
}
