// kill -9 at every action index of a realistic apply, in a child process running the real CLI.
// After recovery, current is exactly the old state; the next run converges to the merged state.
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { JOURNAL_NAME, planEtcMerge, recoverEtcJournal } from '../../src/etc/index.ts';
import { cleanup, materialize, realistic, snapshot, tempDir } from './helpers.ts';

const MAIN = resolve(import.meta.dirname, '../../src/main.ts');
const top = tempDir('nip-etc-crash-');
afterAll(() => cleanup(top));

function setup(name: string): { dir: string; etc: string; args: string[] } {
  const dir = join(top, name);
  const { base, current, next } = realistic();
  materialize(join(dir, 'base'), base);
  materialize(join(dir, 'etc'), current);
  materialize(join(dir, 'new'), next);
  const etc = join(dir, 'etc');
  return { dir, etc, args: ['etc-merge', '--base', join(dir, 'base'), '--current', etc, '--new', join(dir, 'new')] };
}

function cli(args: string[], failpoints?: string): ReturnType<typeof spawnSync> {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' };
  if (failpoints) env.NODE_IMAGE_PIVOT_FAILPOINTS = failpoints;
  else delete env.NODE_IMAGE_PIVOT_FAILPOINTS;
  return spawnSync(process.execPath, [MAIN, ...args], { env, encoding: 'utf8', timeout: 60_000 });
}

describe('crash at every action index', () => {
  it('recovers to the old state and reruns to the merged state', async () => {
    const ref = setup('reference');
    const old = snapshot(ref.etc);
    const total = (await planEtcMerge({ base: join(ref.dir, 'base'), current: ref.etc, new: join(ref.dir, 'new') })).actions.length;
    const done = cli(ref.args);
    expect(done.status, String(done.stderr)).toBe(0);
    const merged = snapshot(ref.etc);
    expect(merged).not.toEqual(old);

    const points = [...Array.from({ length: total }, (_, k) => `etc.apply.action:kill@${k + 1}`), 'etc.apply.commit:kill'];
    for (const [k, fp] of points.entries()) {
      const run = setup(`k${k + 1}`);
      const killed = cli(run.args, fp);
      expect(killed.signal, `${fp}: ${String(killed.stderr)}`).toBe('SIGKILL');
      expect(existsSync(join(run.dir, JOURNAL_NAME)), `${fp}: journal left behind`).toBe(true);
      if (k % 2 === 0) {
        // The orchestrator's path: recover before planning, then look at /etc.
        expect(await recoverEtcJournal(run.etc)).toBe('rolled-back');
        expect(snapshot(run.etc), `${fp}: recovery restores the old state`).toEqual(old);
        expect(existsSync(join(run.dir, JOURNAL_NAME))).toBe(false);
      }
      // The CLI recovers on its own, then plans and applies again.
      const rerun = cli(run.args);
      expect(rerun.status, `${fp}: ${String(rerun.stderr)}`).toBe(0);
      expect(snapshot(run.etc), `${fp}: rerun converges`).toEqual(merged);
      expect(existsSync(join(run.dir, JOURNAL_NAME))).toBe(false);
      cleanup(run.dir);
    }
  }, 300_000);
});
