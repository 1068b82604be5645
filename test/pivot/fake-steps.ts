// A recording fake of the pivot's steps (src/pivot-steps.ts) for driving runPivot in a temp dir:
// every call is logged by name in order, any step can fail or run a hook, the undos are logged.
// The host's own steps are covered where they are real: test/e2e/pivot*.test.ts, test/vm.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseConfig, type Config } from '../../src/config.ts';
import { PivotError } from '../../src/errors.ts';
import type { EtcPlan } from '../../src/etc/index.ts';
import type { PivotRequest } from '../../src/pivot.ts';
import type { PivotSteps, TargetStates } from '../../src/pivot-steps.ts';
import { Progress } from '../../src/progress.ts';
import type { StagingChoice } from '../../src/staging-mode.ts';

export const DIGEST = `sha256:${'a'.repeat(64)}`;
export const PINNED = `reg.example/node@${DIGEST}`;
export const COMPRESSED = 512 * 1024 ** 2;
export const FILE_CONTEXTS = '/staged/etc/selinux/targeted/contexts/files/file_contexts';
export const PLAN: EtcPlan = {
  roots: { base: '/usr/etc', current: '/etc', new: '/staged/usr/etc' }, actions: [], warnings: [], ignored: [], conflicts: [],
  scanned: { base: 0, current: 0, new: 0 }, current: new Map(),
};

/** The call names the fake records; `undo-mount` and `undo-policy` are the undos' calls. */
export type StepName = keyof PivotSteps | 'undo-mount' | 'undo-policy';

export interface FakeOptions {
  /** Throw this from the named step. */
  fail?: Partial<Record<StepName, PivotError>>;
  /** Runs inside the named step, before it returns or throws (e.g. to request a stop). */
  during?: Partial<Record<StepName, () => void>>;
  room?: number;
  /** What usrIsPivotedTo answers. */
  pivoted?: boolean;
  targetStates?: TargetStates;
  /** What stagingMode answers (default full). */
  staging?: StagingChoice;
  /** label() loads a policy (returns an undo) unless false. */
  policyLoaded?: boolean;
}

export interface Fake {
  steps: PivotSteps;
  calls: StepName[];
  /** Arguments the steps were given that the pivot must carry from one step to the next. */
  seen: { pulled?: string; fileContexts?: string | undefined; choice?: StagingChoice | undefined };
}

export function fakeSteps(dir: string, opts: FakeOptions = {}): Fake {
  const calls: StepName[] = [];
  const seen: Fake['seen'] = {};
  const step = (name: StepName): void => {
    calls.push(name);
    opts.during?.[name]?.();
    const err = opts.fail?.[name];
    if (err) throw err;
  };
  const staged = join(dir, 'staging', 'a'.repeat(64));
  const steps: PivotSteps = {
    pendingEtcJournal: () => { step('pendingEtcJournal'); return 'none'; },
    recoverEtc: async () => { step('recoverEtc'); return 'none'; },
    recoverMounts: async () => { step('recoverMounts'); return []; },
    resolve: async () => {
      step('resolve');
      return { reference: 'reg.example/node:1', pinned: PINNED, manifestDigest: DIGEST, compressedBytes: COMPRESSED, layerCount: 2 };
    },
    stagedPath: () => staged,
    stagingRoom: async () => { step('stagingRoom'); return { freeBytes: opts.room ?? 4 * 1024 ** 3, facts: { filesystem: 'disk', inRam: false, reason: 'fake' } }; },
    stagingMode: async () => { step('stagingMode'); return opts.staging ?? { mode: 'full', reason: 'fake', fellBack: false }; },
    pull: async (_cfg, image, _progress, choice) => {
      step('pull');
      seen.pulled = image.pinned;
      seen.choice = choice;
      return { root: staged, reused: false, mode: choice?.mode ?? 'full', facts: { layers: 2 } };
    },
    planEtc: async () => {
      step('planEtc');
      return { plan: PLAN, report: { actions: 3, counts: { add: 3 }, warnings: ['a warning'], conflicts: [], text: 'add x' } };
    },
    label: async () => {
      step('label');
      if (opts.policyLoaded === false) return { skipped: 'selinux off in the config' };
      return { fileContexts: FILE_CONTEXTS, facts: { policyLoaded: true }, undo: async () => step('undo-policy') };
    },
    usrIsPivotedTo: async () => { step('usrIsPivotedTo'); return opts.pivoted ?? false; },
    mountUsr: async () => { step('mountUsr'); return { undo: async () => step('undo-mount'), facts: { mode: 'bind' } }; },
    applyEtc: async (_plan, fileContexts) => { step('applyEtc'); seen.fileContexts = fileContexts; return { applied: 3 }; },
    refresh: async () => { step('refresh'); return { restarted: {} }; },
    targetStates: async () => { step('targetStates'); return opts.targetStates ?? { target: 'inactive', pivotTarget: 'active' }; },
    isolate: async () => { step('isolate'); return { result: 'done' }; },
    settle: async () => { step('settle'); },
  };
  return { steps, calls, seen };
}

export function failure(kind: PivotError['kind'], message = `${kind} failed`): PivotError {
  return new PivotError(kind, message, { fix: `fix the ${kind}` });
}

/** A temp dir with state and staging below it, and a config pointing there. */
export function sandbox(config: Record<string, unknown> = {}): { dir: string; cfg: Config; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'nip-pivot-'));
  mkdirSync(join(dir, 'staging'));
  const cfg = parseConfig({ image: 'reg.example/node:1', stateDir: join(dir, 'state'), stagingDir: join(dir, 'staging'), ...config }, 'test');
  return { dir, cfg, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** A Progress that keeps every STATUS= line instead of sending it. */
export function recordingProgress(): { progress: Progress; statuses: string[] } {
  const statuses: string[] = [];
  const progress = new Progress({ notify: async (f) => { if (f.STATUS) statuses.push(f.STATUS); return true; }, tty: false });
  return { progress, statuses };
}

export function request(cfg: Config, steps: PivotSteps, over: Partial<PivotRequest> = {}): PivotRequest {
  return { cfg, steps, isolate: true, dryRun: false, progress: recordingProgress().progress, ...over };
}
