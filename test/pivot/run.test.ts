// runPivot driven through a recording fake of its steps: the phase story, what each phase's
// success and failure leave in the state file, the skips, dry run and retry attempts.
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Config } from '../../src/config.ts';
import type { ErrorKind } from '../../src/errors.ts';
import { runPivot } from '../../src/pivot.ts';
import { readBootId, readState, writeState, type PhaseName, type PivotState } from '../../src/state.ts';
import { COMPRESSED, DIGEST, FILE_CONTEXTS, PINNED, failure, fakeSteps, recordingProgress, request, sandbox, type StepName } from './fake-steps.ts';

let box: ReturnType<typeof sandbox>;
let cfg: Config;
beforeEach(() => { box = sandbox(); cfg = box.cfg; });
afterEach(() => box.cleanup());

const phasesOf = (state: PivotState | undefined): Array<[PhaseName, string]> => (state?.phases ?? []).map((p) => [p.name, p.result]);
const ALL_DONE: PhaseName[] = ['preflight', 'resolve', 'pull', 'etc-plan', 'selinux', 'mount', 'etc-apply', 'refresh', 'isolate'];

describe('a pivot that succeeds', () => {
  it('runs the steps in phase order, records every phase done, and settles once in isolate mode', async () => {
    const f = fakeSteps(box.dir);
    const out = await runPivot(request(cfg, f.steps));
    expect(out.result).toBe('done');
    expect(f.calls).toEqual(['recoverEtc', 'recoverMounts', 'resolve', 'stagingRoom', 'stagingMode', 'pull', 'planEtc', 'label', 'usrIsPivotedTo', 'mountUsr', 'applyEtc', 'refresh', 'targetStates', 'isolate', 'settle']);
    const s = readState(cfg.stateDir);
    expect(s).toMatchObject({ result: 'done', mode: 'isolate', attempt: 1, image: { reference: 'reg.example/node:1', digest: DIGEST } });
    expect(phasesOf(s)).toEqual(ALL_DONE.map((n) => [n, 'done']));
    expect(s?.phases.find((p) => p.name === 'resolve')?.facts).toMatchObject({ manifestDigest: DIGEST, pinned: PINNED });
    expect(s?.phases.find((p) => p.name === 'etc-plan')?.facts).toEqual({ actions: 3, add: 3, warnings: 1 });
    expect(s?.phases.find((p) => p.name === 'selinux')?.facts).toEqual({ policyLoaded: true });
  });

  it('pulls the reference resolve pinned, and labels /etc with the file_contexts phase selinux loaded', async () => {
    const f = fakeSteps(box.dir);
    await runPivot(request(cfg, f.steps));
    expect(f.seen).toEqual({ pulled: PINNED, fileContexts: FILE_CONTEXTS, choice: { mode: 'full', reason: 'fake', fellBack: false } });
  });

  it('with SELinux off, etc-apply gets no file_contexts and the phase records why', async () => {
    const f = fakeSteps(box.dir, { policyLoaded: false });
    await runPivot(request(cfg, f.steps));
    expect(f.seen.fileContexts).toBeUndefined();
    expect(readState(cfg.stateDir)?.phases.find((p) => p.name === 'selinux')?.facts).toEqual({ skipped: 'selinux off in the config' });
  });

  it('in service mode records isolate as skipped and neither isolates nor settles', async () => {
    const f = fakeSteps(box.dir);
    await runPivot(request(cfg, f.steps, { isolate: false }));
    expect(f.calls).not.toContain('targetStates');
    expect(f.calls).not.toContain('settle');
    const s = readState(cfg.stateDir);
    expect(s?.mode).toBe('service');
    expect(s?.phases.at(-1)).toMatchObject({ name: 'isolate', result: 'skipped', facts: { reason: 'service mode (--no-isolate)' } });
  });

  it('does not isolate when the target is active and the pivot target is not, and says so', async () => {
    const f = fakeSteps(box.dir, { targetStates: { target: 'active', pivotTarget: 'inactive' } });
    await runPivot(request(cfg, f.steps));
    expect(f.calls).not.toContain('isolate');
    expect(readState(cfg.stateDir)?.phases.at(-1)).toMatchObject({ name: 'isolate', result: 'done', facts: { skipped: 'multi-user.target is already active' } });
  });

  it('skips the mount when /usr already shows the staged tree (a previous run mounted it)', async () => {
    const f = fakeSteps(box.dir, { pivoted: true });
    await runPivot(request(cfg, f.steps));
    expect(f.calls).not.toContain('mountUsr');
    expect(readState(cfg.stateDir)?.phases.find((p) => p.name === 'mount')).toMatchObject({ result: 'skipped' });
  });

  it('a failing final reload is only a warning: the pivot is done', async () => {
    const f = fakeSteps(box.dir, { fail: { settle: failure('systemd') } });
    expect((await runPivot(request(cfg, f.steps))).result).toBe('done');
    expect(readState(cfg.stateDir)?.result).toBe('done');
  });
});

describe('a phase that fails', () => {
  // The step each phase calls, and what must have been undone after it failed: from phase
  // selinux until /etc is applied, the booted /usr comes back first, then the booted policy.
  const cases: Array<[PhaseName, StepName, ErrorKind, StepName[]]> = [
    ['preflight', 'recoverEtc', 'etc-merge', []],
    ['resolve', 'resolve', 'registry', []],
    ['pull', 'pull', 'unpack', []],
    ['etc-plan', 'planEtc', 'etc-conflict', []],
    ['selinux', 'label', 'selinux', []],
    ['mount', 'mountUsr', 'mount', ['undo-policy']],
    ['etc-apply', 'applyEtc', 'etc-merge', ['undo-mount', 'undo-policy']],
    ['refresh', 'refresh', 'systemd', []],
    ['isolate', 'isolate', 'systemd', []],
  ];
  it.each(cases)('%s: the error as thrown, the phase failed, nothing after it, and the undos %j', async (name, stepName, kind, undone) => {
    const f = fakeSteps(box.dir, { fail: { [stepName]: failure(kind) } });
    const { progress, statuses } = recordingProgress();
    await expect(runPivot(request(cfg, f.steps, { progress }))).rejects.toMatchObject({ kind, message: `${kind} failed` });
    expect(f.calls.slice(f.calls.indexOf(stepName) + 1)).toEqual(undone);
    const s = readState(cfg.stateDir);
    expect(s).toMatchObject({ result: 'failed', error: { kind, message: `${kind} failed`, fix: `fix the ${kind}` } });
    const i = ALL_DONE.indexOf(name);
    expect(phasesOf(s)).toEqual([...ALL_DONE.slice(0, i).map((n) => [n, 'done']), [name, 'failed']]);
    expect(statuses.at(-1)).toMatch(new RegExp(`^failed: ${kind}: ${kind} failed`));
  });

  it('pull: too little room fails the pull phase with the numbers (exit 9) before pulling', async () => {
    const f = fakeSteps(box.dir, { room: 1024 ** 3 });
    const err = await runPivot(request(cfg, f.steps)).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'preflight', exitCode: 9, path: cfg.stagingDir, facts: { compressedBytes: COMPRESSED, spaceFactor: 3 } });
    expect((err as Error).message).toBe('staging needs 1536 MiB (512 MiB compressed x spaceFactor 3) but only 1024 MiB is free');
    expect(f.calls).not.toContain('pull');
    expect(readState(cfg.stateDir)?.phases.at(-1)).toMatchObject({ name: 'pull', result: 'failed' });
  });

  it('pull: a tree a previous run staged needs no room', async () => {
    const f = fakeSteps(box.dir, { room: 0 });
    mkdirSync(f.steps.stagedPath(cfg, DIGEST));
    expect((await runPivot(request(cfg, f.steps))).result).toBe('done');
    expect(f.calls).not.toContain('stagingRoom');
    expect(f.calls).not.toContain('stagingMode');
    expect(f.seen.choice).toBeUndefined();
  });
});

describe('staging mode', () => {
  const DELTA = { mode: 'delta' as const, reason: 'staging "auto": the root lives in RAM (/ is tmpfs), so only what differs from the booted /usr is staged', fellBack: false };

  it('the pull stages in the mode chosen, and the pull phase records the mode', async () => {
    const f = fakeSteps(box.dir, { staging: DELTA });
    await runPivot(request(cfg, f.steps));
    expect(f.seen.choice).toEqual(DELTA);
    expect(readState(cfg.stateDir)?.phases.find((p) => p.name === 'pull')?.facts).toMatchObject({ stagingMode: 'delta' });
  });

  it('delta needs the compressed size free, not spaceFactor times it', async () => {
    const f = fakeSteps(box.dir, { staging: DELTA, room: COMPRESSED });
    expect((await runPivot(request(cfg, f.steps))).result).toBe('done');
  });

  it('delta without even the compressed size free is refused with the numbers (exit 9) before pulling', async () => {
    const f = fakeSteps(box.dir, { staging: DELTA, room: COMPRESSED - 1024 ** 2 });
    const err = await runPivot(request(cfg, f.steps)).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'preflight', exitCode: 9, facts: { stagingMode: 'delta' } });
    expect((err as Error).message).toBe('delta staging needs 512 MiB (512 MiB compressed, the least delta staging can need) but only 511 MiB is free');
    expect(f.calls).not.toContain('pull');
  });

  it('a full staging with the room a delta would take is still refused', async () => {
    const f = fakeSteps(box.dir, { room: COMPRESSED });
    await expect(runPivot(request(cfg, f.steps))).rejects.toMatchObject({ kind: 'preflight', exitCode: 9 });
  });
});

describe('nothing to do', () => {
  it('a skipIfPathExists path: no resolve, and the isolate still moves the boot on, recorded', async () => {
    const marker = join(box.dir, 'marker');
    writeFileSync(marker, '');
    box.cfg = cfg = { ...cfg, skipIfPathExists: [marker] };
    const f = fakeSteps(box.dir);
    const out = await runPivot(request(cfg, f.steps));
    expect(out).toMatchObject({ result: 'skipped', reason: `skipIfPathExists: ${marker} exists, so this image already has the node layer` });
    expect(f.calls).toEqual(['recoverEtc', 'recoverMounts', 'targetStates', 'isolate', 'settle']);
    const s = readState(cfg.stateDir);
    expect(s).toMatchObject({ result: 'skipped', skipKind: 'path-exists' });
    expect(phasesOf(s)).toEqual([['preflight', 'done'], ['isolate', 'done']]);
  });

  it('a skip in service mode records the isolate as skipped', async () => {
    const marker = join(box.dir, 'marker');
    writeFileSync(marker, '');
    const f = fakeSteps(box.dir);
    await runPivot(request({ ...cfg, skipIfPathExists: [marker] }, f.steps, { isolate: false }));
    expect(f.calls).toEqual(['recoverEtc', 'recoverMounts']);
    expect(phasesOf(readState(cfg.stateDir))).toEqual([['preflight', 'done'], ['isolate', 'skipped']]);
  });

  const done = (over: Partial<PivotState> = {}): PivotState => ({
    version: 1, bootId: readBootId(), pid: 1, mode: 'isolate', startedAt: '', updatedAt: '', result: 'done', phases: [],
    image: { reference: 'reg.example/node:1', digest: DIGEST }, ...over,
  });

  it('already pivoted this boot to the configured image: decided without the network', async () => {
    writeState(cfg.stateDir, done());
    const f = fakeSteps(box.dir);
    const out = await runPivot(request(cfg, f.steps));
    expect(out).toMatchObject({ result: 'skipped', reason: `already pivoted this boot to ${DIGEST}` });
    expect(f.calls).not.toContain('resolve');
    expect(readState(cfg.stateDir)).toMatchObject({ result: 'skipped', skipKind: 'already-pivoted', image: { digest: DIGEST } });
  });

  it('already pivoted to the digest another reference resolves to, while /usr shows it: skipped after resolve', async () => {
    writeState(cfg.stateDir, done({ image: { reference: 'reg.example/node:0', digest: DIGEST } }));
    const f = fakeSteps(box.dir, { pivoted: true });
    const out = await runPivot(request(cfg, f.steps));
    expect(out.result).toBe('skipped');
    expect(f.calls).toEqual(['recoverEtc', 'recoverMounts', 'resolve', 'usrIsPivotedTo', 'targetStates', 'isolate', 'settle']);
    expect(phasesOf(readState(cfg.stateDir))).toEqual([['preflight', 'done'], ['resolve', 'done'], ['isolate', 'done']]);
  });

  it('the same digest while /usr does not show it (someone unmounted it): pivots again', async () => {
    writeState(cfg.stateDir, done({ image: { reference: 'reg.example/node:0', digest: DIGEST } }));
    const f = fakeSteps(box.dir);
    expect((await runPivot(request(cfg, f.steps))).result).toBe('done');
    expect(f.calls).toContain('mountUsr');
  });

  it('a done state from another boot is no reason to skip', async () => {
    writeState(cfg.stateDir, done({ bootId: 'another-boot' }));
    const f = fakeSteps(box.dir);
    expect((await runPivot(request(cfg, f.steps))).result).toBe('done');
  });
});

describe('dry run', () => {
  it('resolves, pulls and plans; recovers nothing, labels and mounts nothing, writes no state file', async () => {
    const f = fakeSteps(box.dir);
    const out = await runPivot(request(cfg, f.steps, { dryRun: true }));
    expect(out).toEqual({
      result: 'dry-run',
      plan: {
        image: { reference: 'reg.example/node:1', pinned: PINNED, manifestDigest: DIGEST, compressedBytes: COMPRESSED, layerCount: 2 },
        etc: { actions: 3, counts: { add: 3 }, warnings: ['a warning'], conflicts: [], text: 'add x' },
        stagedRoot: f.steps.stagedPath(cfg, DIGEST),
      },
    });
    expect(f.calls).toEqual(['pendingEtcJournal', 'resolve', 'stagingRoom', 'stagingMode', 'pull', 'planEtc']);
    expect(readState(cfg.stateDir)).toBeUndefined();
  });

  it('plans even when a skip condition holds, and a failure writes no state file either', async () => {
    const marker = join(box.dir, 'marker');
    writeFileSync(marker, '');
    const f = fakeSteps(box.dir, { fail: { planEtc: failure('etc-conflict') } });
    await expect(runPivot(request({ ...cfg, skipIfPathExists: [marker] }, f.steps, { dryRun: true }))).rejects.toMatchObject({ kind: 'etc-conflict' });
    expect(f.calls).toContain('pull');
    expect(readState(cfg.stateDir)).toBeUndefined();
  });
});

describe('retry attempts within a boot', () => {
  const failed = (over: Partial<PivotState>): PivotState => ({
    version: 1, bootId: readBootId(), pid: 1, mode: 'isolate', startedAt: '', updatedAt: '', result: 'failed', phases: [], ...over,
  });
  const noBackoff = (): Config => ({ ...cfg, timeouts: { ...cfg.timeouts, retryBackoffMaxSeconds: 0 } });

  it('counts up after failures this boot, and starts at 1 after a success or in another boot', async () => {
    for (const [prior, attempt] of [
      [failed({ attempt: 2 }), 3],
      [failed({}), 2],
      [failed({ attempt: 4, bootId: 'another-boot' }), 1],
      [{ ...failed({ attempt: 4 }), result: 'done' as const, image: { reference: 'reg.example/node:0', digest: `sha256:${'c'.repeat(64)}` } }, 1],
    ] as const) {
      writeState(cfg.stateDir, prior);
      await runPivot(request(noBackoff(), fakeSteps(box.dir).steps));
      expect(readState(cfg.stateDir)?.attempt).toBe(attempt);
    }
  });

  it('a failed attempt records its number, so the next one counts on', async () => {
    const f = fakeSteps(box.dir, { fail: { resolve: failure('network') } });
    for (const attempt of [1, 2, 3]) {
      await expect(runPivot(request(noBackoff(), f.steps))).rejects.toMatchObject({ kind: 'network' });
      expect(readState(cfg.stateDir)).toMatchObject({ result: 'failed', attempt });
    }
  });

  it('after a failure the unit does not retry (exit 2, 4, 7), the rerun starts without backoff', async () => {
    // Attempt 3 with the default cap would wait 15 s and say so on STATUS=.
    writeState(cfg.stateDir, failed({ attempt: 2, error: { kind: 'config', message: 'x', fix: 'y', exitCode: 2, line: 'config: x' } }));
    const { progress, statuses } = recordingProgress();
    expect((await runPivot(request(cfg, fakeSteps(box.dir).steps, { progress }))).result).toBe('done');
    expect(readState(cfg.stateDir)?.attempt).toBe(3);
    expect(statuses.filter((t) => t.startsWith('backoff'))).toEqual([]);
  });
});
