// The README's exit code tables are the contract: every code the agent can return is there, and
// the causes the issue named (SELinux, an image without usr/, a policy reload, staging) get
// their documented codes, not 1 ("a bug").
import { readFileSync } from 'node:fs';
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExitCode, StatusExitCode } from '../src/errors.ts';
import { labelTree, planLabel } from '../src/selinux.ts';
import { statusCommand } from '../src/commands/status.ts';

const README = readFileSync(join(import.meta.dirname, '..', 'README.md'), 'utf8');
const section = README.slice(README.indexOf('## Exit codes'), README.indexOf('## Config'));

describe('README exit code tables', () => {
  it('list exactly the codes of ExitCode for run', () => {
    const rows = [...section.matchAll(/^\| (\d+) \| /gm)].map((m) => Number(m[1]));
    expect(rows).toEqual(Object.values(ExitCode).sort((a, b) => a - b));
  });

  it("give status its own codes, none of them one of run's except 0", () => {
    const run = new Set<number>(Object.values(ExitCode));
    for (const [name, code] of Object.entries(StatusExitCode)) {
      if (code !== 0) expect(run.has(code), name).toBe(false);
      expect(section, name).toMatch(new RegExp(`\`status\`[^\\n]*\\b${code}\\b`));
    }
    expect(statusCommand.help).toContain(String(StatusExitCode.failed));
  });

  it('status returns them for a failed and a running state, and 0 with no state', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nip-status-'));
    const write = process.stdout.write.bind(process.stdout);
    try {
      process.stdout.write = (() => true) as typeof process.stdout.write;
      const status = (): Promise<number> => statusCommand.run({ values: { 'state-dir': dir, json: true }, positionals: [] });
      expect(await status()).toBe(StatusExitCode.ok);
      const state = { version: 1, bootId: 'b', pid: 1, mode: 'service', startedAt: '', updatedAt: '', phases: [] };
      writeFileSync(join(dir, 'state.json'), JSON.stringify({ ...state, result: 'failed' }));
      expect(await status()).toBe(StatusExitCode.failed);
      writeFileSync(join(dir, 'state.json'), JSON.stringify({ ...state, result: 'running' }));
      expect(await status()).toBe(StatusExitCode.running);
    } finally {
      process.stdout.write = write;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('documented codes for the causes issue 12 named', () => {
  let root: string;
  beforeEach(() => {
    root = mkdtempSync(join(tmpdir(), 'nip-exit-'));
  });
  afterEach(() => rmSync(root, { recursive: true, force: true }));

  it('SELinux: an image without a policy is permanent (exit 4, not retried); a failing setfiles is a selinux error, exit 12', async () => {
    const missing = (() => { try { planLabel({ stagedRoot: root }); } catch (e) { return e; } return undefined; })();
    // The same image fails the same way on every retry (docs/selinux.md).
    expect(missing).toMatchObject({ kind: 'verification', exitCode: 4 });
    mkdirSync(join(root, 'etc/selinux/targeted/contexts/files'), { recursive: true });
    writeFileSync(join(root, 'etc/selinux/config'), 'SELINUXTYPE=targeted\n');
    writeFileSync(join(root, 'etc/selinux/targeted/contexts/files/file_contexts'), '');
    const plan = { ...planLabel({ stagedRoot: root }), argv: ['sh', '-c', 'echo "setfiles: bad context" >&2; exit 1'] as [string, ...string[]] };
    await expect(labelTree(plan)).rejects.toMatchObject({ kind: 'selinux', exitCode: 12, message: expect.stringContaining('bad context') });
  });

});
