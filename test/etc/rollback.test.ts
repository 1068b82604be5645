// An error at any point of an apply leaves current exactly as it was: content, type, mode,
// owner, symlink targets and xattrs. So does a change made to current after planning.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, readdirSync, writeFileSync, chmodSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { applyEtcMerge, planEtcMerge, recoverEtcJournal, JOURNAL_NAME } from '../../src/etc/index.ts';
import { resetFailpoints } from '../../src/failpoints.ts';
import { PivotError } from '../../src/errors.ts';
import { cleanup, materialize, realistic, snapshot, tempDir } from './helpers.ts';

const dirs: string[] = [];
afterEach(() => {
  delete process.env.NODE_IMAGE_PIVOT_FAILPOINTS;
  resetFailpoints();
  cleanup(...dirs.splice(0));
});

function setup(): { root: string; etc: string; inputs: { base: string; current: string; new: string } } {
  const root = tempDir();
  dirs.push(root);
  const { base, current, next } = realistic();
  materialize(join(root, 'base'), base);
  materialize(join(root, 'etc'), current);
  materialize(join(root, 'new'), next);
  return { root, etc: join(root, 'etc'), inputs: { base: join(root, 'base'), current: join(root, 'etc'), new: join(root, 'new') } };
}

async function expectFailureRolledBack(root: string, etc: string, run: () => Promise<unknown>): Promise<PivotError> {
  const before = snapshot(etc);
  const err = await run().then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(PivotError);
  expect((err as PivotError).kind).toBe('etc-merge');
  expect(snapshot(etc)).toEqual(before);
  expect(readdirSync(root).sort()).toEqual(['base', 'etc', 'new']);
  expect(await recoverEtcJournal(etc)).toBe('none');
  return err as PivotError;
}

describe('rollback on error', () => {
  it('an injected error at every action index, and at commit, restores current exactly', async () => {
    const probe = setup();
    const total = (await planEtcMerge(probe.inputs)).actions.length;
    expect(total).toBeGreaterThan(15);
    const kinds = new Set((await planEtcMerge(probe.inputs)).actions.map((a) => a.action));
    expect([...kinds].sort()).toEqual(['add', 'chmod', 'chown', 'mkdir', 'remove', 'replace', 'symlink']);
    for (let k = 1; k <= total + 1; k++) {
      const { root, etc, inputs } = setup();
      const plan = await planEtcMerge(inputs);
      process.env.NODE_IMAGE_PIVOT_FAILPOINTS = k <= total ? `etc.apply.action:error@${k}` : 'etc.apply.commit:error';
      resetFailpoints();
      const err = await expectFailureRolledBack(root, etc, () => applyEtcMerge(plan));
      expect(err.message).toMatch(/rolled back/);
      expect(err.facts).toMatchObject({ rolledBack: true });
      cleanup(root);
    }
  });

  it('a file changed after planning aborts the apply and keeps the change', async () => {
    const { root, etc, inputs } = setup();
    const plan = await planEtcMerge(inputs);
    writeFileSync(join(etc, 'crio/crio.conf'), 'edited meanwhile\n');
    const err = await expectFailureRolledBack(root, etc, () => applyEtcMerge(plan));
    expect(err.message).toMatch(/changed since the plan/);
    expect(err.path).toBe('crio/crio.conf');
  });

  it('a file added below a directory due for removal aborts the apply', async () => {
    const { root, etc, inputs } = setup();
    const plan = await planEtcMerge(inputs);
    writeFileSync(join(etc, 'obsolete/b/new-local'), 'precious\n');
    const err = await expectFailureRolledBack(root, etc, () => applyEtcMerge(plan));
    expect(err.message).toMatch(/below a directory/);
  });

  it('a mode change after planning aborts the apply', async () => {
    const { root, etc, inputs } = setup();
    const plan = await planEtcMerge(inputs);
    chmodSync(join(etc, 'owned'), 0o600);
    await expectFailureRolledBack(root, etc, () => applyEtcMerge(plan));
  });

  it('refuses to start over an unfinished journal', async () => {
    const { etc, inputs } = setup();
    const plan = await planEtcMerge(inputs);
    mkdirSync(join(etc, '..', JOURNAL_NAME));
    const before = snapshot(etc);
    await expect(applyEtcMerge(plan)).rejects.toThrow(/unfinished/);
    expect(snapshot(etc)).toEqual(before);
  });

  it('an explicit journal directory on another mount is refused before anything changes', async () => {
    if (!existsSync('/dev/shm')) return;
    const { etc, inputs } = setup();
    const plan = await planEtcMerge(inputs);
    const other = join('/dev/shm', `nip-journal-${process.pid}`);
    dirs.push(other);
    const before = snapshot(etc);
    await expect(applyEtcMerge(plan, { journalDir: other })).rejects.toThrow(/same mount/);
    expect(snapshot(etc)).toEqual(before);
  });
});

describe('recovery with a live writer', () => {
  it('refuses to roll back a journal whose writer is still running, and recovers once it is gone', async () => {
    const { spawn } = await import('node:child_process');
    const { writeFileSync: write } = await import('node:fs');
    const { startTicks } = await import('../../src/etc/journal.ts');
    const { readBootId } = await import('../../src/state.ts');
    const { root, etc } = setup();
    const before = snapshot(etc);
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const pid = child.pid as number;
    try {
      await new Promise((r) => child.once('spawn', r));
      const journal = join(root, JOURNAL_NAME);
      mkdirSync(join(journal, 'b'), { recursive: true });
      const header = { v: 1, current: etc, pid, bootId: readBootId(), startTicks: startTicks(pid), startedAt: new Date().toISOString() };
      write(join(journal, 'log'), `${JSON.stringify(header)}\n${JSON.stringify({ i: 1, op: 'remove', path: 'hostname' })}\n`);
      await expect(recoverEtcJournal(etc)).rejects.toThrow(new RegExp(`pid ${pid}\\) is applying`));
      expect(existsSync(journal)).toBe(true);
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      expect(await recoverEtcJournal(etc)).toBe('rolled-back');
      expect(existsSync(journal)).toBe(false);
      expect(snapshot(etc)).toEqual(before);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
