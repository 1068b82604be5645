// The pivot, phase by phase, driving the steps of src/pivot-steps.ts; this file is the story:
//
//   preflight -> resolve -> pull -> etc-plan -> selinux -> mount -> etc-apply -> refresh -> isolate
//
// Everything that can fail for a reason outside our control happens before `mount`. From `mount`
// on, the system changes, and the rule is: /usr all old or all new, /etc untouched or merged.
// `selinux` may load the node image's policy (its types must exist before anything is labelled
// with them); from there until /etc is applied, a failure puts the booted policy back. A failure
// in etc-apply unmounts /usr again. Once both are done the pivot is complete; a failure
// in refresh or isolate is reported, and a rerun picks up from there (the state file and the
// mount table say what is already done).
import { existsSync } from 'node:fs';
import type { Config } from './config.ts';
import { NOT_RETRIED_EXIT_CODES, PivotError, asPivotError, type ExitCode } from './errors.ts';
import { failpointAsync } from './failpoints.ts';
import { log } from './log.ts';
import { attemptNumber, decideSkip, isolateSkipReason, retryDelaySeconds, spaceShortfall, type SkipDecision } from './pivot-rules.ts';
import type { EtcPlanReport, PivotSteps, ResolvedImage } from './pivot-steps.ts';
import type { Progress } from './progress.ts';
import { StateRecorder, readState, readBootId, type PhaseName, type PivotState, type StateError } from './state.ts';

export interface PivotRequest {
  cfg: Config;
  isolate: boolean;
  dryRun: boolean;
  progress: Progress;
  /** src/host-steps.ts on a node; recording fakes in the tests. */
  steps: PivotSteps;
}

export type PivotOutcome =
  | { result: 'done'; state: PivotState }
  | { result: 'skipped'; reason: string; state: PivotState }
  | { result: 'dry-run'; plan: DryRunPlan };

export interface DryRunPlan {
  image: ResolvedImage;
  etc: EtcPlanReport;
  stagedRoot: string;
}

// ---------------------------------------------------------------------------------------------
// Signals. Before the switch nothing on the system has changed, and after /etc is applied the
// pivot is complete, so a stop there exits at once. During selinux (a policy load), mount and
// etc-apply the stop waits for the step to finish, then the normal failure path makes the system
// all old again.

const CRITICAL_PHASES: ReadonlySet<PhaseName> = new Set<PhaseName>(['selinux', 'mount', 'etc-apply']);
/** This process's run, for the signal handler. runPivot resets it; `finished` once the state file says done or skipped. */
const run = {
  phase: undefined as PhaseName | undefined,
  stopRequested: undefined as string | undefined,
  recorder: undefined as StateRecorder | undefined,
  finished: false,
};

function stateError(e: PivotError): StateError {
  return {
    kind: e.kind, message: e.message, fix: e.fix, exitCode: e.exitCode, line: e.oneLine(),
    ...(e.path ? { path: e.path } : {}), ...(e.field ? { field: e.field } : {}),
  };
}

function interruptedError(signal: string): PivotError {
  return new PivotError('interrupted', `stopped by ${signal} during phase ${run.phase ?? 'startup'}`, {
    fix: 'nothing to do: the system is all old or all new, and the next run picks up from here',
  });
}

/**
 * Called from the signal handler. Returns 'now' when the caller may exit immediately (the state
 * file already says why), 'deferred' when the current step must finish first, 'finished' when
 * the pivot is complete already (only the final reload was left): a success, and the state file
 * keeps saying so, or the generator would send the boot back into the pivot target.
 */
export function requestStop(signal: string): 'now' | 'deferred' | 'finished' {
  if (run.finished) {
    log().warn(`${signal} received after the pivot finished: leaving the state file as it is`);
    return 'finished';
  }
  run.stopRequested = signal;
  if (run.phase && CRITICAL_PHASES.has(run.phase)) {
    log().warn({ phase: run.phase }, `${signal} received during ${run.phase}: finishing this step first`);
    return 'deferred';
  }
  const e = interruptedError(signal);
  log().error({ err: e.toJSON() }, e.oneLine());
  run.recorder?.finish('failed', { error: stateError(e) });
  return 'now';
}

// ---------------------------------------------------------------------------------------------

type Skip = Extract<SkipDecision, { skip: true }>;

export async function runPivot(req: PivotRequest): Promise<PivotOutcome> {
  const { cfg, steps, progress } = req;
  const prior = readState(cfg.stateDir);
  const bootId = readBootId();
  const attempt = attemptNumber(prior, bootId);
  // A dry run writes no state file: its record stays in memory.
  const rec = new StateRecorder(cfg.stateDir, req.isolate ? 'isolate' : 'service', { attempt, bootId, persist: !req.dryRun });
  Object.assign(run, { phase: undefined, stopRequested: undefined, recorder: rec, finished: false });
  const undo: Undo = {};

  const phase = async <T>(name: PhaseName, fn: () => Promise<T>, facts?: (t: T) => Record<string, unknown>): Promise<T> => {
    if (run.stopRequested) throw interruptedError(run.stopRequested);
    run.phase = name;
    progress.phase(name);
    log().info({ phase: name }, `phase ${name} started`);
    const record = rec.startPhase(name);
    try {
      await failpointAsync(`phase.${name}`);
      const out = await fn();
      const f = facts?.(out);
      rec.endPhase(record, 'done', f);
      log().info({ phase: name, seconds: record.seconds, ...f }, `phase ${name} done`);
      progress.phaseEnd(name, 'done');
      return out;
    } catch (err) {
      rec.endPhase(record, 'failed');
      progress.phaseEnd(name, 'failed');
      throw err;
    }
  };
  const skipPhase = (name: PhaseName, reason: string): void => {
    progress.phaseEnd(name, 'skipped');
    rec.endPhase(rec.startPhase(name), 'skipped', { reason });
    log().info({ phase: name, reason }, `phase ${name} skipped: ${reason}`);
  };
  // Leave the pivot target (isolate mode) and wait for the job's result; a skipped run too, or the
  // boot would sit in the pivot target with no journal line saying why.
  const isolatePhase = async (): Promise<void> => {
    if (!req.isolate) return skipPhase('isolate', 'service mode (--no-isolate)');
    await phase('isolate', async () => {
      const skipped = isolateSkipReason(cfg.isolateTarget, await steps.targetStates(cfg));
      return skipped ? { skipped } : steps.isolate(cfg);
    }, (f) => f);
  };
  const finish = async (outcome: 'done' | 'skipped', skip?: Skip): Promise<void> => {
    rec.finish(outcome, skip ? { skipReason: skip.reason, skipKind: skip.kind } : {});
    run.finished = true;
    await failpointAsync(`pivot.${outcome}`);
    if (req.isolate) await settle(steps);
  };
  const finishSkipped = async (skip: Skip): Promise<PivotOutcome> => {
    log().info({ reason: skip.reason }, `nothing to do: ${skip.reason}`);
    await isolatePhase();
    await finish('skipped', skip);
    await progress.finalStatus(`skipped: ${skip.reason}`);
    return { result: 'skipped', reason: skip.reason, state: rec.state };
  };

  try {
    // 1. Preflight: undo a half-applied /etc and the mounts of a crashed run, then decide whether to skip.
    const pre = await phase('preflight', async () => {
      // A dry run changes nothing, not even a rollback: it reports a pending journal instead.
      const recovered = req.dryRun ? steps.pendingEtcJournal() : await steps.recoverEtc();
      const detached = req.dryRun ? [] : await steps.recoverMounts(cfg);
      if (recovered === 'pending') log().warn('an interrupted /etc apply is pending; the next real run rolls it back before planning');
      const existing = new Set(cfg.skipIfPathExists.filter((p) => existsSync(p)));
      const configured = cfg.image ?? cfg.releaseImage;
      return { recovered, detached, decision: decideSkip({ skipIfPathExists: cfg.skipIfPathExists, existing, prior, bootId, ...(configured ? { configured } : {}) }) };
    }, (p) => ({ etcJournal: p.recovered, skip: p.decision.skip, ...(p.detached.length ? { detachedMounts: p.detached } : {}) }));
    // After a failure the unit does not retry, a rerun is someone fixing the cause: no waiting.
    const notRetried = prior?.error !== undefined && NOT_RETRIED_EXIT_CODES.includes(prior.error.exitCode as ExitCode);
    const delay = req.dryRun || pre.decision.skip || notRetried ? 0 : retryDelaySeconds(attempt, cfg.timeouts.retryBackoffMaxSeconds);
    if (delay > 0) {
      const why = prior?.error?.line ?? 'the previous attempt failed';
      log().warn({ attempt, delaySeconds: delay }, `attempt ${attempt} this boot: waiting ${delay} s before retrying (last failure: ${why})`);
      progress.phase('backoff', `attempt ${attempt}, waiting ${delay} s`);
      await new Promise((resolve) => setTimeout(resolve, delay * 1000));
    }
    if (pre.decision.skip && !req.dryRun) {
      if (prior?.image && pre.decision.kind === 'already-pivoted') rec.setImage(prior.image);
      return await finishSkipped(pre.decision);
    }

    // 2. Resolve the node image to a digest (from a release image if needed); the pull is pinned to it.
    const image = await phase('resolve', () => steps.resolve(cfg), (i) => ({ ...i }));
    rec.setImage({ reference: image.reference, digest: image.manifestDigest, ...(image.releaseImage ? { releaseImage: image.releaseImage } : {}) });
    const again = decideSkip({ skipIfPathExists: [], existing: new Set(), prior, bootId, digest: image.manifestDigest });
    const stagedRoot = steps.stagedPath(cfg, image.manifestDigest);
    if (again.skip && !req.dryRun && (await steps.usrIsPivotedTo(cfg, stagedRoot))) return await finishSkipped(again);

    // 3. Pull and unpack into staging (reused when a previous run finished it), if there is room:
    // in full, or only what differs from the booted /usr (delta, when the root lives in RAM).
    const staged = await phase('pull', async () => {
      // A tree a previous run finished needs no room (and its staging is in place).
      if (existsSync(stagedRoot)) return steps.pull(cfg, image, progress);
      const room = await steps.stagingRoom(cfg, stagedRoot);
      const choice = await steps.stagingMode(cfg);
      log().info({ phase: 'pull', stagingMode: choice.mode, fellBack: choice.fellBack }, `staging: ${choice.mode} (${choice.reason})`);
      const shortfall = spaceShortfall(room.freeBytes, image.compressedBytes, choice.mode === 'delta' ? 1 : cfg.spaceFactor, room.facts.inRam, choice.mode);
      if (shortfall) {
        throw new PivotError('preflight', shortfall, {
          path: cfg.stagingDir,
          fix: room.facts.inRam
            ? `give the node more RAM (staging is in RAM: ${room.facts.filesystem}), or point stagingDir at a disk with room`
            : 'give the staging filesystem more room, or point stagingDir at a larger filesystem',
          facts: { compressedBytes: image.compressedBytes, spaceFactor: cfg.spaceFactor, stagingMode: choice.mode, staging: room.facts },
        });
      }
      const tree = await steps.pull(cfg, image, progress, choice);
      return { ...tree, facts: { ...tree.facts, staging: room.facts } };
    }, (s) => ({ reused: s.reused, stagingMode: s.mode, ...s.facts }));

    // 4. Plan /etc. A conflict stops here, before anything changes.
    const etc = await phase('etc-plan', () => steps.planEtc(cfg, staged), (e) => ({ actions: e.report.actions, ...e.report.counts, warnings: e.report.warnings.length }));
    for (const w of etc.report.warnings) log().warn({ phase: 'etc-plan' }, w);
    if (req.dryRun) return { result: 'dry-run', plan: { image, etc: etc.report, stagedRoot: staged.root } };

    // 5. SELinux: the node image's policy is loaded (when it differs) and labels the staged tree,
    // before anything is visible. Until /etc is applied, a failure puts the booted policy back.
    const labelled = await phase('selinux', () => steps.label(cfg, staged), (l) => ({ ...(l.skipped ? { skipped: l.skipped } : {}), ...l.facts }));
    undo.policy = labelled.undo;
    if (labelled.skipped) log().info(`SELinux labelling skipped: ${labelled.skipped}`);

    // 6-7. The switch: mount /usr, then apply /etc (labelled with the node image's file_contexts).
    // Until /etc is applied, any failure (the catch below) unmounts /usr again: all old.
    if (await steps.usrIsPivotedTo(cfg, staged.root)) {
      skipPhase('mount', '/usr is already the staged tree (a previous run mounted it)');
    } else {
      const mounted = await phase('mount', () => steps.mountUsr(cfg, staged), (m) => m.facts);
      undo.mount = () => mounted.undo();
    }
    await phase('etc-apply', () => steps.applyEtc(etc.plan, labelled.fileContexts), (f) => f);
    delete undo.mount;
    delete undo.policy;
    await failpointAsync('pivot.switched');

    // 8. Make systemd see the new /usr: reload units (PID 1 also picks up the new file_contexts,
    // the policy being loaded since phase selinux), create users and dirs, restart units.
    await phase('refresh', () => steps.refresh(cfg), (f) => f);

    // 9. Leave the pivot target.
    await isolatePhase();
    await finish('done');
    await progress.finalStatus(`pivoted to ${image.manifestDigest}`);
    return { result: 'done', state: rec.state };
  } catch (err) {
    const e = await undoAfterFailure(asPivotError(err), undo);
    rec.finish('failed', { error: stateError(e) });
    progress.phase('failed', e.oneLine());
    await progress.flush();
    throw e;
  }
}

/** What puts the system back to all old, from phase selinux until /etc is applied. */
interface Undo {
  mount?: () => Promise<void>;
  policy?: () => Promise<void>;
}

/**
 * The booted /usr first, then the booted policy. An undo that fails becomes the error: the
 * system is not all old, and the message and fix must say what is left to do by hand.
 */
async function undoAfterFailure(e: PivotError, undo: Undo): Promise<PivotError> {
  let out = e;
  if (undo.mount) {
    log().error('the pivot failed after /usr was switched but before /etc was applied: unmounting the new /usr so the system stays all old');
    out = await undo.mount().then(() => out, (u: unknown) => {
      const err = asPivotError(u);
      return undoFailed(out, err, 'unmounting the new /usr', { kind: 'mount', fix: err.kind === 'mount' ? err.fix : 'unmount it by hand: umount -R -l /usr' });
    });
  }
  if (undo.policy) {
    log().error('the pivot failed after the node image\'s SELinux policy was loaded: putting the booted policy back, with the booted /usr');
    out = await undo.policy().then(() => out, (u: unknown) => undoFailed(out, asPivotError(u), 'putting the booted SELinux policy back', {
      // The kernel's refusal speaks of the node image; here it is the booted policy that did not load.
      kind: 'selinux', fix: 'reboot, which loads the booted policy again; until then the node image\'s policy is loaded with the booted /usr',
    }));
  }
  return out;
}

function undoFailed(e: PivotError, u: PivotError, what: string, as: { kind: 'mount' | 'selinux'; fix: string }): PivotError {
  log().error({ err: u.toJSON() }, `${what} failed too`);
  return new PivotError(as.kind, `${e.message}; then ${what} failed too, so the system is not all old: ${u.message}`, {
    ...(u.path ? { path: u.path } : {}),
    fix: as.fix,
    facts: { failure: e.toJSON(), undoFailed: what },
    cause: e,
  });
}

/** Best effort: the pivot is complete either way, and the next reload does the same. */
async function settle(steps: PivotSteps): Promise<void> {
  await steps.settle().catch((err: unknown) => log().warn({ err: asPivotError(err).toJSON() }, 'final daemon-reload failed; default.target still names the pivot target until the next reload'));
}
