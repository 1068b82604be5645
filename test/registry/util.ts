// Shared bits of the registry tests: run the CLI as a subprocess (exit codes, one-line errors)
// and write registries.conf / auth files.
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = join(import.meta.dirname, '..', '..');

export interface CliResult { code: number; stdout: string; stderr: string; errorLine: string }

export function runCli(args: string[], env: Record<string, string> = {}): CliResult {
  const r = spawnSync(process.execPath, [join(ROOT, 'src', 'main.ts'), ...args], {
    env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn', ...env },
    encoding: 'utf8',
    timeout: 120_000,
  });
  const stderr = r.stderr ?? '';
  // The failing line is the last log line at error level (or the plain usage line).
  const lines = stderr.split('\n').filter(Boolean);
  const errorJson = lines.map((l) => l.replace(/^<\d>/, '')).filter((l) => l.includes('"level":50')).pop();
  const errorLine = errorJson ? String((JSON.parse(errorJson) as { msg: string }).msg) : (lines.pop() ?? '');
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr, errorLine };
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
