import { afterEach, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ENV_VAR, PARKED_FILE_VAR, failpoint, failpointAsync, parseFailpoints, resetFailpoints } from '../src/failpoints.ts';
import { waitFor } from './helpers/wait.ts';
import { PivotError } from '../src/errors.ts';

afterEach(() => {
  delete process.env[ENV_VAR];
  resetFailpoints();
});

describe('failpoints', () => {
  it('parses actions and hit counts', () => {
    expect(parseFailpoints('unpack.entry:error@1200, etc.apply.action:kill@5,a:exit=3,b:sleep=20,c:error=mount,d:park,e:park=50@2')).toEqual([
      { name: 'unpack.entry', action: { type: 'error', kind: 'internal' }, at: 1200 },
      { name: 'etc.apply.action', action: { type: 'kill' }, at: 5 },
      { name: 'a', action: { type: 'exit', code: 3 }, at: undefined },
      { name: 'b', action: { type: 'sleep', ms: 20 }, at: undefined },
      { name: 'c', action: { type: 'error', kind: 'mount' }, at: undefined },
      { name: 'd', action: { type: 'park', ms: 600_000 }, at: undefined },
      { name: 'e', action: { type: 'park', ms: 50 }, at: 2 },
    ]);
  });

  it('rejects a malformed spec as a usage error naming the variable', () => {
    expect(() => parseFailpoints('nonsense')).toThrow(PivotError);
    expect(() => parseFailpoints('x:explode')).toThrow(expect.objectContaining({ kind: 'usage', field: ENV_VAR, exitCode: 2 }));
  });

  it('does nothing when unset', () => {
    for (let i = 0; i < 1000; i++) failpoint('unpack.entry');
  });

  it('triggers only on the chosen hit', () => {
    process.env[ENV_VAR] = 'step:error=unpack@3';
    resetFailpoints();
    failpoint('step');
    failpoint('other');
    failpoint('step');
    expect(() => failpoint('step')).toThrow(/failpoint step triggered at hit 3/);
    failpoint('step');
  });

  it('kill really kills the process with SIGKILL', () => {
    const script = `import { failpoint } from './src/failpoints.ts'; failpoint('a'); console.log('survived-a'); failpoint('a'); console.log('survived-b');`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      env: { ...process.env, [ENV_VAR]: 'a:kill@2' }, encoding: 'utf8',
    });
    expect(r.stdout).toBe('survived-a\n');
    expect(r.signal).toBe('SIGKILL');
  });

  it('park refuses a synchronous site, and passes through other hits', async () => {
    process.env[ENV_VAR] = 'sync:park,step:park=1@2';
    resetFailpoints();
    expect(() => failpoint('sync')).toThrow(expect.objectContaining({ kind: 'usage', field: ENV_VAR }));
    await failpointAsync('step');
    // The second hit parks for 1 ms: no signal needed to get past it.
    await failpointAsync('step');
  });

  it('park announces itself, keeps the event loop running, and lets go on a stop signal', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'nip-park-'));
    const parked = join(dir, 'parked');
    try {
      // The child's own SIGTERM handler stands for the agent's: it must run while parked.
      const script = `import { failpointAsync } from './src/failpoints.ts';
process.on('SIGTERM', () => console.log('handler ran'));
await failpointAsync('phase.x');
console.log('released');`;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], {
        env: { ...process.env, [ENV_VAR]: 'phase.x:park', [PARKED_FILE_VAR]: parked }, stdio: ['ignore', 'pipe', 'inherit'],
      });
      let out = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
      await waitFor(() => existsSync(parked), 'the park file');
      expect(readFileSync(parked, 'utf8')).toBe(`phase.x 1 ${String(child.pid)}\n`);
      expect(out).toBe('');
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(out).toBe('handler ran\nreleased\n');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
