import { afterEach, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { ENV_VAR, failpoint, parseFailpoints, resetFailpoints } from '../src/failpoints.ts';
import { PivotError } from '../src/errors.ts';

afterEach(() => {
  delete process.env[ENV_VAR];
  resetFailpoints();
});

describe('failpoints', () => {
  it('parses actions and hit counts', () => {
    expect(parseFailpoints('unpack.entry:error@1200, etc.apply.action:kill@5,a:exit=3,b:sleep=20,c:error=mount')).toEqual([
      { name: 'unpack.entry', action: { type: 'error', kind: 'internal' }, at: 1200 },
      { name: 'etc.apply.action', action: { type: 'kill' }, at: 5 },
      { name: 'a', action: { type: 'exit', code: 3 }, at: undefined },
      { name: 'b', action: { type: 'sleep', ms: 20 }, at: undefined },
      { name: 'c', action: { type: 'error', kind: 'mount' }, at: undefined },
    ]);
  });

  it('rejects a malformed spec as a usage error naming the variable', () => {
    expect(() => parseFailpoints('nonsense')).toThrow(PivotError);
    try {
      parseFailpoints('x:explode');
    } catch (e) {
      expect((e as PivotError).field).toBe(ENV_VAR);
      expect((e as PivotError).exitCode).toBe(2);
    }
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
});
