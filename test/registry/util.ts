// Shared bits of the registry tests: run the CLI as a subprocess (exit codes, one-line errors)
// and write registries.conf / auth files.
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');

export interface CliResult { code: number; stdout: string; stderr: string; errorLine: string }

/** Synchronous: only for servers in another process (docker-registry), see runCliAsync. */
export function runCli(args: string[], env: Record<string, string> = {}): CliResult {
  const r = spawnSync(process.execPath, [join(ROOT, 'src', 'main.ts'), ...args], {
    env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn', ...env },
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { ...parseOutput(r.stdout ?? '', r.stderr ?? ''), code: r.status ?? -1 };
}

function parseOutput(stdout: string, stderr: string): Omit<CliResult, 'code'> {
  // The failing line is the last log line at error level (or the plain usage line).
  const lines = stderr.split('\n').filter(Boolean);
  const errorJson = lines.map((l) => l.replace(/^<\d>/, '')).filter((l) => l.includes('"level":50')).pop();
  const errorLine = errorJson ? String((JSON.parse(errorJson) as { msg: string }).msg) : (lines.pop() ?? '');
  return { stdout, stderr, errorLine };
}

/** Async on purpose: token servers and proxies run in this process and must keep answering. */
export async function runCliAsync(args: string[], env: Record<string, string> = {}): Promise<CliResult> {
  const child = spawn(process.execPath, [join(ROOT, 'src', 'main.ts'), ...args], {
    env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
  child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
  const code = await new Promise<number>((resolve) => child.on('close', (c) => resolve(c ?? -1)));
  return { ...parseOutput(stdout, stderr), code };
}

export function writeRegistriesConf(dir: string, text: string, name = 'registries.conf'): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

/** registries.conf marking each loopback host insecure (plain HTTP). */
export function insecureConf(dir: string, hosts: string[], extra = ''): string {
  return writeRegistriesConf(dir, `${hosts.map((h) => `[[registry]]\nlocation = "${h}"\ninsecure = true\n`).join('\n')}\n${extra}`);
}

export function writeAuthFile(dir: string, auths: Record<string, { user: string; password: string }>, name = 'auth.json'): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify({ auths: Object.fromEntries(Object.entries(auths).map(([k, v]) => [k, { auth: Buffer.from(`${v.user}:${v.password}`).toString('base64') }])) }));
  return file;
}
