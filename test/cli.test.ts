import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { COMMANDS, commandHelp } from '../src/cli.ts';

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, ['src/main.ts', ...args], { encoding: 'utf8', env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'info' } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('cli', () => {
  it('has exactly the fixed subcommands', () => {
    expect(COMMANDS.map((c) => c.name)).toEqual(['run', 'pull', 'resolve', 'etc-merge', 'status', 'ignition']);
  });

  it('prints its version and the embedded Node version', () => {
    const r = cli('--version');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^node-image-pivot \d+\.\d+\.\d+ \(node 24\.\d+\.\d+, linux\/x64\)\n$/);
  });

  it.each(COMMANDS.map((c) => c.name))('--help works for %s and lists every option', (name) => {
    const r = cli(name, '--help');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`Usage: node-image-pivot ${name}`);
    const cmd = COMMANDS.find((c) => c.name === name)!;
    for (const opt of Object.keys(cmd.options)) expect(r.stdout).toContain(`--${opt}`);
    expect(commandHelp(cmd)).toBe(r.stdout.trimEnd());
  });

  it('exits 2 with one line and a hint on an unknown flag', () => {
    const r = cli('pull', 'quay.io/a/b:1', '--dset', 'x');
    expect(r.code).toBe(2);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/--dset/);
    expect(r.stderr).toMatch(/pull --help/);
  });

  it('exits 2 on a missing argument, an extra argument and an unknown command', () => {
    expect(cli('resolve').stderr).toMatch(/missing RELEASE_IMAGE/);
    expect(cli('resolve').code).toBe(2);
    const extra = cli('status', 'extra');
    expect([extra.code, /unexpected argument "extra"/.test(extra.stderr)]).toEqual([2, true]);
    const unknown = cli('pivot');
    expect([unknown.code, /unknown command "pivot"/.test(unknown.stderr)]).toEqual([2, true]);
  });

  it('without arguments prints help and exits 2', () => {
    const r = cli();
    expect(r.code).toBe(2);
    expect(r.stdout).toMatch(/Commands:/);
  });
});
