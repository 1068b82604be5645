// A stop signal (requestStop, as the signal handler calls it) at each phase of runPivot, and
// what a failed undo makes of the error. Driven through the recording fake of the steps.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.ts';
import { PivotError } from '../../src/errors.ts';
import { requestStop, runPivot } from '../../src/pivot.ts';
import { readState, type PhaseName } from '../../src/state.ts';
import { failure, fakeSteps, request, sandbox, type StepName } from './fake-steps.ts';

let box: ReturnType<typeof sandbox>;
let cfg: Config;
beforeEach(() => { box = sandbox(); cfg = box.cfg; });
afterEach(() => box.cleanup());

describe('a stop during each phase', () => {
  // selinux, mount and etc-apply finish their step first ('deferred'); elsewhere the handler exits
  // at once ('now', the state file already says why) and a test process goes on to the next phase,
  // which must not start. What runs after the stop is the undo the step makes necessary.
  const cases: Array<[PhaseName, StepName, 'now' | 'deferred', StepName[]]> = [
    ['preflight', 'recoverEtc', 'now', ['recoverMounts']],
    ['resolve', 'resolve', 'now', []],
    ['pull', 'pull', 'now', []],
    ['etc-plan', 'planEtc', 'now', []],
    ['selinux', 'label', 'deferred', ['usrIsPivotedTo', 'undo-policy']],
    ['mount', 'mountUsr', 'deferred', ['undo-mount', 'undo-policy']],
    ['etc-apply', 'applyEtc', 'deferred', []],
    ['refresh', 'refresh', 'now', []],
  ];
  it.each(cases)('%s (step %s): the handler answers %s, the run fails as interrupted there, then only %j', async (name, stepName, answer, after) => {
    let said: string | undefined;
    const f = fakeSteps(box.dir, { during: { [stepName]: () => { said = requestStop('SIGTERM'); } } });
    await expect(runPivot(request(cfg, f.steps))).rejects.toMatchObject({ kind: 'interrupted', exitCode: 10 });
    expect(said).toBe(answer);
    expect(f.calls.slice(f.calls.indexOf(stepName) + 1)).toEqual(after);
    const s = readState(cfg.stateDir);
    expect(s).toMatchObject({ result: 'failed', error: { kind: 'interrupted', message: `stopped by SIGTERM during phase ${name}` } });
    // The interrupted phase finished its step; no phase after it started.
    expect(s?.phases.at(-1)).toMatchObject({ name, result: 'done' });
  });

  it('during isolate, the last phase: the handler may exit at once, the state file already says why', async () => {
    let said: string | undefined;
    let state: ReturnType<typeof readState>;
    const f = fakeSteps(box.dir, { during: { isolate: () => { said = requestStop('SIGHUP'); state = readState(cfg.stateDir); } } });
    await runPivot(request(cfg, f.steps)).catch(() => undefined);
    expect(said).toBe('now');
    expect(state!).toMatchObject({ result: 'failed', error: { kind: 'interrupted', message: 'stopped by SIGHUP during phase isolate', exitCode: 10 } });
  });

  it('a stop during a skipped run stops before its isolate', async () => {
    const { writeFileSync } = await import('node:fs');
    const marker = `${box.dir}/marker`;
    writeFileSync(marker, '');
    const f = fakeSteps(box.dir, { during: { recoverMounts: () => { requestStop('SIGINT'); } } });
    await expect(runPivot(request({ ...cfg, skipIfPathExists: [marker] }, f.steps))).rejects.toMatchObject({ kind: 'interrupted' });
    expect(f.calls).toEqual(['recoverEtc', 'recoverMounts']);
    expect(readState(cfg.stateDir)?.phases.map((p) => p.name)).toEqual(['preflight']);
  });

  it('during the final reload: done stays done, and the handler is told the run finished', async () => {
    let said: string | undefined;
    const f = fakeSteps(box.dir, { during: { settle: () => { said = requestStop('SIGTERM'); } } });
    expect((await runPivot(request(cfg, f.steps))).result).toBe('done');
    expect(said).toBe('finished');
    expect(readState(cfg.stateDir)).toMatchObject({ result: 'done' });
    expect(readState(cfg.stateDir)?.error).toBeUndefined();
  });

  it('one run\'s stop does not interrupt the next run in the same process', async () => {
    const stopped = fakeSteps(box.dir, { during: { applyEtc: () => { requestStop('SIGTERM'); } } });
    await expect(runPivot(request(cfg, stopped.steps, { isolate: false }))).rejects.toMatchObject({ kind: 'interrupted' });
    expect((await runPivot(request(cfg, fakeSteps(box.dir).steps, { isolate: false }))).result).toBe('done');
    expect(readState(cfg.stateDir)?.result).toBe('done');
  });
});

describe('an undo that fails', () => {
  const undoError = (kind: PivotError['kind'], fix: string): PivotError => new PivotError(kind, 'target is busy', { path: '/usr', fix });

  it('unmounting /usr: the error says the system is not all old, and gives the undo\'s fix', async () => {
    const f = fakeSteps(box.dir, { fail: { applyEtc: failure('etc-merge'), 'undo-mount': undoError('mount', 'unmount it by hand: umount -R -l /usr') } });
    const err = await runPivot(request(cfg, f.steps)).catch((e: unknown) => e) as PivotError;
    expect(err).toMatchObject({ kind: 'mount', exitCode: 6, path: '/usr', fix: 'unmount it by hand: umount -R -l /usr' });
    expect(err.message).toBe('etc-merge failed; then unmounting the new /usr failed too, so the system is not all old: target is busy');
    expect(err.facts).toMatchObject({ undoFailed: 'unmounting the new /usr', failure: { kind: 'etc-merge' } });
    // The booted policy is still put back.
    expect(f.calls.slice(-2)).toEqual(['undo-mount', 'undo-policy']);
    expect(readState(cfg.stateDir)?.error).toMatchObject({ kind: 'mount', message: err.message, fix: err.fix });
  });

  it('putting the booted policy back: an interrupted run no longer claims all old', async () => {
    const f = fakeSteps(box.dir, {
      during: { mountUsr: () => { requestStop('SIGTERM'); } },
      // The kernel's refusal is a verification error about the image; the undo's is not that.
      fail: { 'undo-policy': undoError('verification', 'ship a policy this kernel can load') },
    });
    const err = await runPivot(request(cfg, f.steps)).catch((e: unknown) => e) as PivotError;
    expect(err).toMatchObject({ kind: 'selinux', exitCode: 12, fix: expect.stringMatching(/^reboot, which loads the booted policy again/) });
    expect(err.message).toBe('stopped by SIGTERM during phase mount; then putting the booted SELinux policy back failed too, so the system is not all old: target is busy');
    expect(readState(cfg.stateDir)?.error?.line).not.toMatch(/all old or all new/);
  });

  it('both: the error names both, the last undo\'s fix first to do', async () => {
    const f = fakeSteps(box.dir, { fail: { applyEtc: failure('etc-merge'), 'undo-mount': undoError('mount', 'umount /usr'), 'undo-policy': undoError('selinux', 'reboot') } });
    const err = await runPivot(request(cfg, f.steps)).catch((e: unknown) => e) as PivotError;
    expect(err.message).toMatch(/^etc-merge failed; then unmounting the new \/usr failed too, .*; then putting the booted SELinux policy back failed too/);
    expect(err.kind).toBe('selinux');
  });
});
