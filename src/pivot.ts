// The pivot, phase by phase. Each phase is one call into a capability; this file is the story:
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
import { existsSync, lstatSync, readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Config } from './config.ts';
import { NOT_RETRIED_EXIT_CODES, PivotError, asPivotError, type ExitCode } from './errors.ts';
import { failpointAsync } from './failpoints.ts';
import { log } from './log.ts';
import { StateRecorder, readState, readBootId, type PhaseName, type PivotState, type SkipKind, type StateError } from './state.ts';
import type { Progress } from './progress.ts';
import { stagingUsedBytes, type StagingRoom } from './staging-fs.ts';

/** What `resolve` learns about the node image without downloading its layers. */
export interface ResolvedImage {
  reference: string;
  releaseImage?: string;
  manifestDigest: string;
  compressedBytes: number;
  layerCount: number;
}

export interface StagedTree {
  /** Root of the unpacked image; its usr/ becomes /usr. */
  root: string;
  reused: boolean;
  facts: Record<string, unknown>;
}

export interface EtcPlanSummary {
  actions: number;
  counts: Record<string, number>;
  warnings: string[];
  conflicts: string[];
  text: string;
}

/** The capabilities the pivot drives. src/commands/run.ts wires the real ones. */
export interface PivotCapabilities {
  resolve(cfg: Config): Promise<ResolvedImage>;
  pull(cfg: Config, image: ResolvedImage, progress: Progress): Promise<StagedTree>;
  /** Loads the node image's policy if it differs, then labels the staged tree; `undo` puts the booted policy back. */
  label(cfg: Config, staged: StagedTree): Promise<{ skipped?: string; facts?: Record<string, unknown>; undo?: () => Promise<void> }>;
  planEtc(cfg: Config, staged: StagedTree): Promise<{ plan: unknown; summary: EtcPlanSummary }>;
  /** Returns an undo handle. The visible switch must be one mount. */
  mountUsr(cfg: Config, staged: StagedTree): Promise<{ undo(): Promise<void>; facts: Record<string, unknown> }>;
  /** Makes stagingDir ready (its own tmpfs when it would sit in RAM); says how much room it has. */
  prepareStaging(cfg: Config): Promise<StagingRoom>;
  /** Does /usr already show the staged tree rooted at `stagedRoot`? */
  usrIsPivotedTo(stagedRoot: string): Promise<boolean>;
  applyEtc(plan: unknown): Promise<Record<string, unknown>>;
  recoverEtc(): Promise<'none' | 'rolled-back'>;
  /** Detaches the mounts a crashed run left at the agent's own mount points; returns them. */
  recoverMounts(cfg: Config): Promise<string[]>;
  /** Whether a crashed run left an /etc journal, without touching it. */
  pendingEtcJournal(): 'none' | 'pending';
  refresh(cfg: Config, staged: StagedTree): Promise<Record<string, unknown>>;
  isolate(cfg: Config): Promise<Record<string, unknown>>;
  /**
   * After the state file says done or skipped: let systemd rerun the generator, so default.target
   * stops pointing at the pivot target for the rest of this boot.
   */
  settle(): Promise<void>;
  /** Where to find the staged tree for a digest, if a previous run finished unpacking it. */
  stagedPath(cfg: Config, digest: string): string;
}

export interface PivotRequest {
  cfg: Config;
  isolate: boolean;
  dryRun: boolean;
  progress: Progress;
  caps: PivotCapabilities;
}

export type PivotOutcome =
  | { result: 'done'; state: PivotState }
  | { result: 'skipped'; reason: string; state: PivotState }
  | { result: 'dry-run'; plan: DryRunPlan };

export interface DryRunPlan {
  image: ResolvedImage;
  etc: EtcPlanSummary;
  stagedRoot: string;
}

// ---------------------------------------------------------------------------------------------
// Preflight: decide whether this run has anything to do.

export type SkipDecision = { skip: false } | { skip: true; kind: SkipKind; reason: string };

/**
 * Pure: the skip rules, given what is on disk and what the state file says. Before resolving,
 * `configured` (the image or release image as written in the config) is all we know, so a
 * restart after success needs no network; after resolving, the digest must match.
 */
export function decideSkip(input: {
  skipIfPathExists: string[];
  existing: ReadonlySet<string>;
  prior: PivotState | undefined;
  bootId: string;
  configured?: string;
  digest?: string;
}): SkipDecision {
  const hit = input.skipIfPathExists.find((p) => input.existing.has(p));
  if (hit) return { skip: true, kind: 'path-exists', reason: `skipIfPathExists: ${hit} exists, so this image already has the node layer` };
  const p = input.prior;
  if (!p || p.bootId !== input.bootId || !p.image?.digest) return { skip: false };
  if (p.result !== 'done' && !(p.result === 'skipped' && p.skipKind === 'already-pivoted')) return { skip: false };
  const same = input.digest
    ? p.image.digest === input.digest
    : input.configured !== undefined && (p.image.releaseImage ?? p.image.reference) === input.configured;
  return same ? { skip: true, kind: 'already-pivoted', reason: `already pivoted this boot to ${p.image.digest}` } : { skip: false };
}

/**
 * Pure: which attempt this run is, from the previous run's state. A failure earlier this boot
 * makes this a retry; anything else (no state, another boot, a success) starts over at 1.
 */
export function attemptNumber(prior: PivotState | undefined, bootId: string): number {
  if (!prior || prior.bootId !== bootId || prior.result !== 'failed') return 1;
  return (prior.attempt ?? 1) + 1;
}

/**
 * Pure: how long to wait before this attempt, on top of the unit's RestartSec=15s. systemd 252
 * has no RestartSteps=, so the backoff lives here: retries 2, 3, 4, 5, 6, 7... start about
 * 15, 30, 60, 120, 240, 300 s after the previous failure (15 s base, doubling, capped).
 */
export function retryDelaySeconds(attempt: number, maxSeconds: number, restartSec = 15): number {
  if (attempt < 3 || maxSeconds <= restartSec) return 0;
  return Math.max(0, Math.min(restartSec * 2 ** (attempt - 2), maxSeconds) - restartSec);
}

/** Pure: enough room to stage? Returns the shortfall message or undefined. */
export function spaceShortfall(availableBytes: number, compressedBytes: number, factor: number, inRam = false): string | undefined {
  const needed = Math.ceil(compressedBytes * factor);
  if (availableBytes >= needed) return undefined;
  const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(0)} MiB`;
  const where = inRam ? ' in RAM (MemAvailable minus stagingReserveMiB, or the tmpfs cap)' : '';
  return `staging needs ${mib(needed)} (${mib(compressedBytes)} compressed x spaceFactor ${factor}) but only ${mib(availableBytes)} is free${where}`;
}

/**
 * Bytes under `stagingDir` that the pull phase removes before it stages (an interrupted run's
 * `.unpacked`, other images' trees): the space check counts them as free, or a retry after a
 * failed unpack on a live ISO would be refused for room it is about to get back. Each inode once.
 */
export function reclaimableStagingBytes(stagingDir: string, keep: readonly string[]): number {
  if (!existsSync(stagingDir)) return 0;
  const seen = new Set<string>();
  let total = 0;
  const walk = (path: string): void => {
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (!st) return;
    const id = `${st.dev}:${st.ino}`;
    if (seen.has(id)) return;
    seen.add(id);
    total += st.blocks * 512;
    if (st.isDirectory()) for (const name of readdirSync(path)) walk(join(path, name));
  };
  for (const name of readdirSync(stagingDir)) if (!keep.includes(name)) walk(join(stagingDir, name));
  return total;
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

export async function runPivot(req: PivotRequest): Promise<PivotOutcome> {
  const { cfg, caps, progress } = req;
  const prior = readState(cfg.stateDir);
  const bootId = readBootId();
  const attempt = attemptNumber(prior, bootId);
  const rec = req.dryRun ? undefined : new StateRecorder(cfg.stateDir, req.isolate ? 'isolate' : 'service', { attempt, bootId });
  Object.assign(run, { phase: undefined, stopRequested: undefined, recorder: rec, finished: false });
  let undoMount: (() => Promise<void>) | undefined;
  let undoPolicy: (() => Promise<void>) | undefined;

  const phase = async <T>(name: PhaseName, fn: () => Promise<T>, facts?: (t: T) => Record<string, unknown>): Promise<T> => {
    if (run.stopRequested) throw interruptedError(run.stopRequested);
    run.phase = name;
    progress.phase(name);
    log().info({ phase: name }, `phase ${name} started`);
    const record = rec?.startPhase(name);
    await failpointAsync(`phase.${name}`);
    try {
      const out = await fn();
      const f = facts?.(out);
      if (record) rec?.endPhase(record, 'done', f);
      log().info({ phase: name, seconds: record?.seconds, ...f }, `phase ${name} done`);
      progress.phaseEnd(name, 'done');
      return out;
    } catch (err) {
      if (record) rec?.endPhase(record, 'failed');
      progress.phaseEnd(name, 'failed');
      throw err;
    }
  };
  const skipPhase = (name: PhaseName, reason: string): void => {
    progress.phaseEnd(name, 'skipped');
    if (!rec) return;
    const record = rec.startPhase(name);
    rec.endPhase(record, 'skipped', { reason });
    log().info({ phase: name, reason }, `phase ${name} skipped: ${reason}`);
  };

  try {
    // 1. Preflight: undo a half-applied /etc from a crashed run, then decide whether to skip.
    const pre = await phase('preflight', async () => {
      // A dry run changes nothing, not even a rollback: it reports a pending journal instead.
      const recovered = req.dryRun ? caps.pendingEtcJournal() : await caps.recoverEtc();
      const detached = req.dryRun ? [] : await caps.recoverMounts(cfg);
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
      if (prior?.image && pre.decision.kind === 'already-pivoted') rec!.setImage(prior.image);
      return await finishSkipped(req, rec!, pre.decision);
    }

    // 2. Resolve the node image to a digest (from a release image if needed).
    const image = await phase('resolve', () => caps.resolve(cfg), (i) => ({ ...i }));
    rec?.setImage({ reference: image.reference, digest: image.manifestDigest, ...(image.releaseImage ? { releaseImage: image.releaseImage } : {}) });
    const again = decideSkip({ skipIfPathExists: [], existing: new Set(), prior, bootId, digest: image.manifestDigest });
    const stagedRoot = caps.stagedPath(cfg, image.manifestDigest);
    if (again.skip && !req.dryRun && (await caps.usrIsPivotedTo(stagedRoot))) {
      return await finishSkipped(req, rec!, again);
    }

    // 3. Pull and unpack into staging (reused when a previous run finished it).
    const room = await caps.prepareStaging(cfg);
    const shortfall = existsSync(stagedRoot) ? undefined : spaceShortfall(
      room.freeBytes + reclaimableStagingBytes(cfg.stagingDir, ['blobs', basename(stagedRoot)]), image.compressedBytes, cfg.spaceFactor, room.facts.inRam);
    if (shortfall) {
      throw new PivotError('preflight', shortfall, {
        path: cfg.stagingDir,
        fix: room.facts.inRam
          ? `give the node more RAM (staging is in RAM: ${room.facts.filesystem}), or point stagingDir at a disk with room`
          : 'give the staging filesystem more room, or point stagingDir at a larger filesystem',
        facts: { compressedBytes: image.compressedBytes, spaceFactor: cfg.spaceFactor, staging: room.facts },
      });
    }
    const staged = await phase('pull', () => caps.pull(cfg, image, progress), (s) => ({
      reused: s.reused, ...s.facts, staging: { ...room.facts, usedBytes: stagingUsedBytes(cfg.stagingDir) }, peakRssBytes: process.resourceUsage().maxRSS * 1024,
    }));

    // 4. Plan /etc. A conflict stops here, before anything changes.
    const etc = await phase('etc-plan', () => caps.planEtc(cfg, staged), (e) => ({ actions: e.summary.actions, ...e.summary.counts, warnings: e.summary.warnings.length }));
    for (const w of etc.summary.warnings) log().warn({ phase: 'etc-plan' }, w);
    if (req.dryRun) return { result: 'dry-run', plan: { image, etc: etc.summary, stagedRoot: staged.root } };

    // 5. SELinux: the node image's policy is loaded (when it differs) and labels the staged tree,
    // before anything is visible. Until /etc is applied, a failure puts the booted policy back.
    const labelled = await phase('selinux', () => caps.label(cfg, staged), (l) => ({ ...(l.skipped ? { skipped: l.skipped } : {}), ...l.facts }));
    undoPolicy = labelled.undo;
    if (labelled.skipped) log().info(`SELinux labelling skipped: ${labelled.skipped}`);

    // 6-7. The switch: mount /usr, then apply /etc. Until /etc is applied, any failure (the
    // catch below) unmounts /usr again, so the system stays all old.
    if (await caps.usrIsPivotedTo(staged.root)) {
      skipPhase('mount', '/usr is already the staged tree (a previous run mounted it)');
    } else {
      const mounted = await phase('mount', () => caps.mountUsr(cfg, staged), (m) => m.facts);
      undoMount = () => mounted.undo();
    }
    await phase('etc-apply', () => caps.applyEtc(etc.plan), (f) => f);
    undoMount = undefined;
    undoPolicy = undefined;
    await failpointAsync('pivot.switched');

    // 8. Make systemd see the new /usr: reload units, create users and dirs, restart units.
    await phase('refresh', () => caps.refresh(cfg, staged), (f) => f);

    // 9. Leave the pivot target (isolate mode) and wait for the job's result.
    if (req.isolate) await phase('isolate', () => caps.isolate(cfg), (f) => f);
    else skipPhase('isolate', 'service mode (--no-isolate)');

    rec!.finish('done');
    run.finished = true;
    await failpointAsync('pivot.done');
    if (req.isolate) await settle(caps);
    await progress.ready(`pivoted to ${image.manifestDigest}`);
    return { result: 'done', state: rec!.state };
  } catch (err) {
    const e = asPivotError(err);
    if (undoMount) {
      log().error('the pivot failed after /usr was switched but before /etc was applied: unmounting the new /usr so the system stays all old');
      await undoMount().catch((u: unknown) => log().error({ err: asPivotError(u).toJSON() }, 'unmounting /usr after a failure failed too'));
    }
    if (undoPolicy) {
      log().error('the pivot failed after the node image\'s SELinux policy was loaded: putting the booted policy back, with the booted /usr');
      await undoPolicy().catch((u: unknown) => log().error({ err: asPivotError(u).toJSON() }, 'putting the booted SELinux policy back failed too'));
    }
    rec?.finish('failed', { error: stateError(e) });
    progress.phase('failed', e.oneLine());
    await progress.flush();
    throw e;
  }
}

/** Best effort: the pivot is complete either way, and the next reload does the same. */
async function settle(caps: PivotCapabilities): Promise<void> {
  await caps.settle().catch((err: unknown) => log().warn({ err: asPivotError(err).toJSON() }, 'final daemon-reload failed; default.target still names the pivot target until the next reload'));
}

/**
 * A skip still has to move the boot on: once the generator made the pivot target the boot
 * target, nothing else leaves it, and the node would sit there with no journal line saying why.
 */
async function finishSkipped(req: PivotRequest, rec: StateRecorder, skip: { kind: SkipKind; reason: string }): Promise<PivotOutcome> {
  log().info({ reason: skip.reason }, `nothing to do: ${skip.reason}`);
  if (req.isolate) await req.caps.isolate(req.cfg);
  rec.finish('skipped', { skipReason: skip.reason, skipKind: skip.kind });
  run.finished = true;
  if (req.isolate) await settle(req.caps);
  await req.progress.ready(`skipped: ${skip.reason}`);
  return { result: 'skipped', reason: skip.reason, state: rec.state };
}
