// Peak RSS and wall time of the agent against each hostile registry of issue 17
// (test/helpers/hostile-cases.ts), bounded so that a case cannot eat the shared machine:
// `ulimit -v` (virtual memory) and `timeout -s KILL` around GNU time.
//   node scripts/bench/hostile.ts [--binary dist/node-image-pivot] [--limit-kib 3000000]
//        [--timeout 60] [--only SUBSTRING] [--out FILE.jsonl]
import { spawn } from 'node:child_process';
import { appendFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { errorLineOf } from '../../test/faults/cli.ts';
import { HOSTILE_CASES } from '../../test/helpers/hostile-cases.ts';

const root = resolve(import.meta.dirname, '..', '..');
const { values } = parseArgs({ options: {
  binary: { type: 'string' }, 'limit-kib': { type: 'string' }, timeout: { type: 'string' }, only: { type: 'string' }, out: { type: 'string' },
} });
const binary = resolve(values.binary ?? join(root, 'dist', 'node-image-pivot'));
const limitKib = Number(values['limit-kib'] ?? 3_000_000);
const timeoutS = Number(values.timeout ?? 60);
const tmp = mkdtempSync(join(tmpdir(), 'nip-hostile-bench-'));

const sh = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

interface Row { case: string; exit: string; peakRssMiB: number; seconds: number; stderrBytes: number; stdout: string; errorLine: string; observed: Record<string, unknown> }

function run(argv: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string; timeFile: string }> {
  const timeFile = join(tmp, `time-${Date.now()}-${Math.random()}`);
  const cmd = `ulimit -v ${limitKib}; exec /usr/bin/time -v -o ${sh(timeFile)} timeout --foreground -s KILL ${timeoutS} ${argv.map(sh).join(' ')}`;
  return new Promise((res, rej) => {
    const child = spawn('bash', ['-c', cmd], { env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => { stdout = (stdout + d.toString()).slice(0, 4096); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', rej);
    child.on('close', (code) => res({ code, stdout, stderr, timeFile }));
  });
}

function timeOf(file: string): { rssKib: number; seconds: number; signal?: string } {
  const t = readFileSync(file, 'utf8');
  const rss = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(t)?.[1] ?? 0);
  const wall = /Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)/.exec(t);
  const seconds = wall ? Number(wall[1] ?? 0) * 3600 + Number(wall[2]) * 60 + Number(wall[3]) : 0;
  const sig = /Command terminated by signal (\d+)/.exec(t)?.[1];
  return { rssKib: rss, seconds, ...(sig ? { signal: sig } : {}) };
}

for (const [name, make] of Object.entries(HOSTILE_CASES)) {
  if (values.only && !name.includes(values.only)) continue;
  const c = await make(tmp);
  try {
    const argv = c.runner === 'cli' ? [binary, ...c.args] : [process.execPath, join(root, 'scripts/bench/hostile-open.ts'), ...c.args];
    const env = { ...c.env, ...(c.timeouts ? { HOSTILE_TIMEOUTS: JSON.stringify(c.timeouts) } : {}) };
    const r = await run(argv, env);
    const t = timeOf(r.timeFile);
    const exit = t.signal ? `killed (signal ${t.signal})` : r.code === 137 ? 'killed by timeout' : String(r.code);
    const row: Row = {
      case: name, exit, peakRssMiB: Math.round(t.rssKib / 1024), seconds: Math.round(t.seconds * 10) / 10,
      stderrBytes: r.stderr.length, stdout: r.stdout.trim().slice(0, 160), errorLine: errorLineOf(r.stderr).slice(0, 160), observed: c.observe(),
    };
    process.stdout.write(`${JSON.stringify(row)}\n`);
    if (values.out) appendFileSync(values.out, `${JSON.stringify(row)}\n`);
  } finally {
    await c.stop();
  }
}
rmSync(tmp, { recursive: true, force: true });
