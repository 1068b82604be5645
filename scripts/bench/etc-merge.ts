// Plan+apply time of the /etc merge on a generated /etc: FILES files (default 5000) in nested
// directories, 10% changed locally, 10% changed upstream, a few added and removed on each side.
//   node scripts/bench/etc-merge.ts [--files N] [--dir /dev/shm] [--durable]
// Prints one JSON line. Uses a tmpfs (/dev/shm) when there is one, like a live-ISO /etc.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { parseArgs } from 'node:util';
import { applyEtcMerge, planEtcMerge, recoverEtcJournal } from '../../src/etc/index.ts';

process.env.NODE_IMAGE_PIVOT_LOG_LEVEL ??= 'warn';
const { values } = parseArgs({ options: { files: { type: 'string' }, dir: { type: 'string' }, durable: { type: 'boolean' } } });
const files = Number(values.files ?? 5000);
const parent = values.dir ?? (existsSync('/dev/shm') ? '/dev/shm' : tmpdir());
const root = mkdtempSync(join(parent, 'nip-etc-bench-'));

function content(i: number, variant: string): string {
  // Realistic sizes: most /etc files are a few hundred bytes; same size across variants forces
  // the hash path instead of the cheap size check.
  return `# file ${i} ${variant}\n${'key = value\n'.repeat(10 + (i % 40))}`;
}

function write(tree: string, rel: string, text: string, mode = 0o644): void {
  const abs = join(tree, rel);
  writeFileSync(abs, text);
  chmodSync(abs, mode);
}

const trees = ['base', 'etc', 'new'].map((t) => join(root, t));
for (const t of trees) mkdirSync(t);
let seed = 42;
const rand = (): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
for (let i = 0; i < files; i++) {
  const dir = `d${i % 50}/s${i % 7}`;
  const rel = `${dir}/file-${i}.conf`;
  for (const t of trees) mkdirSync(join(t, dir), { recursive: true });
  const original = content(i, 'AAAA');
  write(trees[0] as string, rel, original);
  const r = rand();
  // current: 10% local changes (content, mode, deletion), the rest identical to base.
  if (r < 0.06) write(trees[1] as string, rel, content(i, 'LOCL'));
  else if (r < 0.08) write(trees[1] as string, rel, original, 0o600);
  else if (r >= 0.1 || r < 0.09) write(trees[1] as string, rel, original);
  // new: 10% upstream changes, 1% removed.
  const u = rand();
  if (u < 0.1) write(trees[2] as string, rel, content(i, 'UPST'));
  else if (u >= 0.11) write(trees[2] as string, rel, original);
}
for (let i = 0; i < files / 100; i++) {
  write(trees[1] as string, `d${i % 50}/local-${i}.conf`, 'added locally\n');
  mkdirSync(join(trees[2] as string, `new${i}`), { recursive: true });
  write(trees[2] as string, `new${i}/upstream-${i}.conf`, 'added upstream\n');
}

try {
  const t0 = performance.now();
  await recoverEtcJournal(trees[1] as string);
  const plan = await planEtcMerge({ base: trees[0] as string, current: trees[1] as string, new: trees[2] as string });
  const t1 = performance.now();
  const result = await applyEtcMerge(plan, { durable: values.durable === true });
  const t2 = performance.now();
  console.log(JSON.stringify({
    files,
    fs: parent,
    durable: values.durable === true,
    scanned: plan.scanned,
    actions: plan.actions.length,
    warnings: plan.warnings.length,
    counts: result.counts,
    planMs: Math.round(t1 - t0),
    applyMs: Math.round(t2 - t1),
    totalMs: Math.round(t2 - t0),
  }));
} finally {
  rmSync(root, { recursive: true, force: true });
}
