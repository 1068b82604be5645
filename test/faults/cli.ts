// The real CLI as a child process, without blocking the event loop: the fault proxy and the token
// server live in the test process and must keep answering while the CLI runs.
import { spawn } from 'node:child_process';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');
export const MAIN = join(ROOT, 'src', 'main.ts');

export interface CliRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** The one line an operator reads: the last error-level log message, or the usage line. */
  errorLine: string;
  ms: number;
}

export function errorLineOf(stderr: string): string {
  const lines = stderr.split('\n').filter(Boolean).map((l) => l.replace(/^<\d>/, ''));
  const json = lines.filter((l) => l.includes('"level":50')).pop();
  if (json) {
    try {
      return String((JSON.parse(json) as { msg: string }).msg);
    } catch { /* fall through */ }
  }
  return lines.pop() ?? '';
}

export function runCli(args: string[], opts: { env?: Record<string, string>; timeoutMs?: number; argv0?: string[] } = {}): Promise<CliRun> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(opts.argv0?.[0] ?? process.execPath, [...(opts.argv0?.slice(1) ?? []), MAIN, ...args], {
      env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const timer = setTimeout(() => { if (child.pid) process.kill(child.pid, 'SIGKILL'); }, opts.timeoutMs ?? 120_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, errorLine: errorLineOf(stderr), ms: Date.now() - t0 });
    });
  });
}
