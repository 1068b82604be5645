// Medians, spreads, ratios and targets for the bench, and the table it prints.
import type { RunResult } from './runners.ts';

export interface ToolStats {
  label: string;
  runs: number;
  seconds: number[];
  median?: number;
  min?: number;
  max?: number;
  /** (max - min) / median, percent. */
  spreadPct?: number;
  peakRssMiB?: { median: number; max: number; runs: number[] };
  /** Peak RssAnon: the process's own memory, without the executable's file pages. */
  peakAnonMiB?: { median: number; max: number; runs: number[] };
  /** Median user+system CPU seconds (GNU time), and ru_maxrss in MiB. */
  cpuSeconds?: number;
  maxRssMiB?: number;
  parts?: Record<string, number>;
  /** Why there is no number (tool missing, unsupported, failed). */
  unavailable?: string;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

const r2 = (x: number): number => Math.round(x * 100) / 100;

export function summarise(label: string, runs: RunResult[], unavailable: string | undefined): ToolStats {
  const seconds = runs.map((r) => r2(r.seconds));
  const out: ToolStats = { label, runs: runs.length, seconds };
  if (unavailable && runs.length === 0) out.unavailable = unavailable;
  else if (unavailable) out.unavailable = `failed after ${runs.length} runs: ${unavailable}`;
  if (runs.length === 0) return out;
  out.median = r2(median(seconds));
  out.min = Math.min(...seconds);
  out.max = Math.max(...seconds);
  out.spreadPct = Math.round(((out.max - out.min) / out.median) * 100);
  const rss = runs.map((r) => r.peakRssKiB).filter((x): x is number => x !== undefined && x > 0).map((k) => Math.round(k / 1024));
  if (rss.length) out.peakRssMiB = { median: median(rss), max: Math.max(...rss), runs: rss };
  const anon = runs.map((r) => r.peakAnonKiB).filter((x): x is number => x !== undefined && x > 0).map((k) => Math.round(k / 1024));
  if (anon.length) out.peakAnonMiB = { median: median(anon), max: Math.max(...anon), runs: anon };
  const cpu = runs.map((r) => r.cpuSeconds).filter((x): x is number => x !== undefined);
  if (cpu.length) out.cpuSeconds = r2(median(cpu));
  const maxrss = runs.map((r) => r.maxRssKiB).filter((x): x is number => x !== undefined);
  if (maxrss.length) out.maxRssMiB = Math.round(median(maxrss) / 1024);
  const partNames = [...new Set(runs.flatMap((r) => Object.keys(r.parts ?? {})))];
  if (partNames.length) out.parts = Object.fromEntries(partNames.map((p) => [p, r2(median(runs.map((r) => r.parts?.[p] ?? 0)))]));
  return out;
}

type Results = Record<string, Record<string, ToolStats>>;

function ratio(a: ToolStats | undefined, b: ToolStats | undefined, key: 'median' | 'cpuSeconds' = 'median'): number | string {
  if (a?.[key] === undefined) return `n/a (a: ${a?.unavailable ?? 'no runs'})`;
  if (b?.[key] === undefined) return `n/a (${b?.unavailable ?? 'no runs'})`;
  return r2(a[key] / b[key]);
}

export interface Verdict { target: string; value: number | string | undefined; pass: boolean | 'n/a' }

export function printReport(_report: unknown, results: Results, extras: Record<string, unknown>): { ratios: Record<string, unknown>; targets: Verdict[] } {
  const ratios: Record<string, Record<string, number | string>> = {};
  const lines: string[] = [];
  const ids = [...new Set(Object.values(results).flatMap((r) => Object.keys(r)))];
  const cell = (s: ToolStats | undefined): string => (s?.median === undefined ? 'n/a' : `${s.median.toFixed(2)}±${s.spreadPct}%`);
  lines.push(['image', ...ids.map((i) => `${i} (s)`), 'a/b', 'a/c', 'a/d', 'a peak RSS', 'a peak anon'].map((c) => c.padEnd(13)).join(' '));
  for (const [image, r] of Object.entries(results)) {
    const row: Record<string, number | string> = { 'a/b': ratio(r.a, r.b), 'a/c': ratio(r.a, r.c), 'a/d': ratio(r.a, r.d) };
    for (const v of ids.filter((i) => !['a', 'b', 'c', 'd'].includes(i))) row[`${v}/d`] = ratio(r[v], r.d);
    for (const o of ['b', 'c', 'd']) row[`cpu a/${o}`] = ratio(r.a, r[o], 'cpuSeconds');
    ratios[image] = row;
    const short = (x: number | string | undefined): string => (typeof x === 'number' ? x.toFixed(2) : 'n/a');
    lines.push([image, ...ids.map((i) => cell(r[i])), short(row['a/b']), short(row['a/c']), short(row['a/d']),
      r.a?.peakRssMiB ? `${r.a.peakRssMiB.median} MiB` : 'n/a', r.a?.peakAnonMiB ? `${r.a.peakAnonMiB.median} MiB` : 'n/a'].map((c) => c.padEnd(13)).join(' '));
  }
  const x1 = results.ref?.a?.peakRssMiB?.median;
  const x2 = results['ref-x2']?.a?.peakRssMiB?.median;
  const rssRatio = x1 && x2 ? r2(x2 / x1) : undefined;
  const peak = Math.max(0, ...Object.values(results).map((r) => r.a?.peakRssMiB?.max ?? 0));
  const etc = extras.etcMerge as { totalMsMedian?: number } | undefined;
  const pivot = extras.pivot as { overheadSeconds?: number } | undefined;
  const num = (x: unknown): number | undefined => (typeof x === 'number' ? x : undefined);
  const targets: Verdict[] = [];
  const check = (target: string, value: number | string | undefined, ok: (v: number) => boolean): void => {
    targets.push({ target, value, pass: typeof value === 'number' ? ok(value) : 'n/a' });
  };
  for (const image of Object.keys(results)) {
    check(`${image}: a/d <= 1.3`, ratios[image]!['a/d'], (v) => v <= 1.3);
    check(`${image}: a/b <= 0.5`, ratios[image]!['a/b'], (v) => v <= 0.5);
  }
  check('peak RSS of a <= 150 MiB', peak || undefined, (v) => v <= 150);
  // Reported beside the target, not instead of it: the part of the peak that is the process's own.
  const anonPeak = Math.max(0, ...Object.values(results).map((r) => r.a?.peakAnonMiB?.max ?? 0));
  check('peak anonymous RSS of a <= 150 MiB (informational)', anonPeak || undefined, (v) => v <= 150);
  check('RSS ref-x2/ref <= 1.10', rssRatio, (v) => v <= 1.1);
  check('/etc merge < 1000 ms', num(etc?.totalMsMedian), (v) => v < 1000);
  check('pivot overhead < 2 s', num(pivot?.overheadSeconds), (v) => v < 2);
  // The staging-modes case judged its own targets (staging-report.ts) and printed its table.
  const staging = extras.stagingModes as { targets?: Verdict[]; unavailable?: string } | undefined;
  if (staging?.targets) targets.push(...staging.targets);
  else if (staging) targets.push({ target: 'staging delta: RAM, pivot time and peak RSS against full', value: `n/a (${staging.unavailable ?? 'no result'})`, pass: 'n/a' });

  const out = process.stdout;
  out.write(`\n${lines.join('\n')}\n\n`);
  out.write('CPU seconds (user+sys, median): ');
  out.write(`${Object.entries(results).map(([image, r]) => `${image} ${Object.entries(r).map(([id, s]) => `${id}=${s.cpuSeconds ?? 'n/a'}`).join(' ')}`).join('; ')}\n`);
  out.write(`RSS x2/x1: ${rssRatio ?? 'n/a'}   (a's peak RSS across all runs: ${peak || 'n/a'} MiB)\n`);
  for (const [k, v] of Object.entries(extras)) if (k !== 'stagingModes') out.write(`${k}: ${JSON.stringify(v)}\n`);
  out.write('\ntargets:\n');
  for (const t of targets) out.write(`  ${t.pass === true ? 'PASS' : t.pass === false ? 'MISS' : 'n/a '}  ${t.target}: ${t.value ?? 'n/a'}\n`);
  for (const [image, r] of Object.entries(results)) {
    for (const [id, s] of Object.entries(r)) if (s.unavailable) out.write(`  note: ${image}/${id}: ${s.unavailable}\n`);
  }
  return { ratios: { ...ratios, 'rss x2/x1': rssRatio ?? 'n/a' }, targets };
}
