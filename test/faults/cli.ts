// The real CLI as a child process, without blocking the event loop: the fault proxy and the token
// server live in the test process and must keep answering while the CLI runs.
import { spawn } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
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

let nobodyBinary: string | undefined;

/**
 * argv0 for running the CLI as nobody (root bypasses permission bits, so EACCES cases need an
 * unprivileged user). nobody may not reach the checkout (CI clones into a private temp dir), so
 * it runs a copy of the single executable from a directory anyone can enter. Pass with entry: [].
 */
export function asNobody(): string[] {
  if (!nobodyBinary) {
    const built = join(ROOT, 'dist', 'node-image-pivot');
    if (!existsSync(built)) throw new Error(`${built} is missing: npm test builds it first (npm run build)`);
    const dir = mkdtempSync(join(tmpdir(), 'nip-nobody-'));
    chmodSync(dir, 0o755);
    nobodyBinary = join(dir, 'node-image-pivot');
    copyFileSync(built, nobodyBinary);
    chmodSync(nobodyBinary, 0o755);
  }
  return ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups', nobodyBinary];
}

/** Removes asNobody's copy (call from afterAll). */
export function releaseNobody(): void {
  if (nobodyBinary) rmSync(join(nobodyBinary, '..'), { recursive: true, force: true });
  nobodyBinary = undefined;
}

export function runCli(args: string[], opts: { env?: Record<string, string>; timeoutMs?: number; argv0?: string[]; entry?: string[] } = {}): Promise<CliRun> {
  const t0 = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(opts.argv0?.[0] ?? process.execPath, [...(opts.argv0?.slice(1) ?? []), ...(opts.entry ?? [MAIN]), ...args], {
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
