// npm run test:faults: runs the fault suite (test/faults/, plus test/e2e/faults-*.test.ts with
// --e2e), prints ONE table (category, case, expected, observed, pass) and writes it into
// docs/reliability.md between the fault-table markers, with the counts per category.
//
//   npm run test:faults            unit fault cases (what CI runs as part of npm test too)
//   npm run test:faults -- --e2e   also the nspawn fault cases
//   npm run test:faults -- --no-doc   print only
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

interface Row { category: string; case: string; expected: string; observed: string; pass: boolean; ms: number }

const ROOT = join(import.meta.dirname, '..', '..');
const DOC = join(ROOT, 'docs', 'reliability.md');
const START = '<!-- fault-table:start -->';
const END = '<!-- fault-table:end -->';
const args = process.argv.slice(2);
const withE2e = args.includes('--e2e');
const writeDoc = !args.includes('--no-doc');

const tmp = mkdtempSync(join(tmpdir(), 'nip-fault-table-'));
const tableFile = join(tmp, 'rows.jsonl');
const vitest = join(ROOT, 'node_modules', '.bin', 'vitest');
const runs: string[][] = [['run', '--project', 'unit', 'test/faults/']];
if (withE2e) runs.push(['run', '--project', 'e2e', 'test/e2e/faults-']);
const t0 = Date.now();
let status = 0;
for (const argv of runs) {
  const r = spawnSync(vitest, [...argv, '--reporter=dot'], {
    cwd: ROOT, stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, NIP_FAULT_TABLE: tableFile },
  });
  if (r.status !== 0) status = r.status ?? 1;
}
const seconds = (Date.now() - t0) / 1000;
const rows: Row[] = existsSync(tableFile)
  ? readFileSync(tableFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Row)
  : [];
rmSync(tmp, { recursive: true, force: true });
const order = ['registry', 'hostile-layer', 'config', 'local', 'crash', 'systemd'];
rows.sort((a, b) => (order.indexOf(a.category) - order.indexOf(b.category)) || 0);

const cell = (s: string): string => s.replace(/\|/g, '\\|');
const markdown = [
  '| category | case | expected | observed | pass |',
  '|---|---|---|---|---|',
  ...rows.map((r) => `| ${r.category} | ${cell(r.case)} | ${cell(r.expected)} | ${cell(r.observed)} | ${r.pass ? 'yes' : '**NO**'} |`),
].join('\n');

const counts = new Map<string, { pass: number; fail: number }>();
for (const r of rows) {
  const c = counts.get(r.category) ?? { pass: 0, fail: 0 };
  if (r.pass) c.pass++;
  else c.fail++;
  counts.set(r.category, c);
}
const passed = rows.filter((r) => r.pass).length;
const summary = `${rows.length} cases, ${passed} passed, ${rows.length - passed} failed, ${seconds.toFixed(0)} s: `
  + [...counts].map(([k, c]) => `${k} ${c.pass + c.fail}`).join(', ');

// The terminal table: fixed columns, long cells cut.
const widths = [13, 52, 44, 70, 4];
const fit = (s: string, w: number): string => (s.length > w ? `${s.slice(0, w - 1)}…` : s.padEnd(w));
const line = (cells: string[]): string => cells.map((c, i) => fit(c, widths[i]!)).join('  ');
process.stdout.write(`\n${line(['category', 'case', 'expected', 'observed', 'pass'])}\n`);
process.stdout.write(`${widths.map((w) => '-'.repeat(w)).join('  ')}\n`);
for (const r of rows) process.stdout.write(`${line([r.category, r.case, r.expected, r.observed, r.pass ? 'yes' : 'NO'])}\n`);
process.stdout.write(`\n${summary}\n`);

if (writeDoc && existsSync(DOC)) {
  const doc = readFileSync(DOC, 'utf8');
  const i = doc.indexOf(START);
  const j = doc.indexOf(END);
  if (i >= 0 && j > i) {
    const stamp = `Last run: ${new Date().toISOString().slice(0, 10)}${withE2e ? ' (with --e2e)' : ''}. ${summary}`;
    writeFileSync(DOC, `${doc.slice(0, i + START.length)}\n${stamp}\n\n${markdown}\n${doc.slice(j)}`);
    process.stdout.write(`table written to ${DOC}\n`);
  }
}
if (rows.length === 0) status ||= 1;
process.exit(status);
