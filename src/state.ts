// /run/node-image-pivot/state.json: what the pivot did this boot, phase by phase. It is the
// source of `status`, of the generator's "already done this boot" check, and of a rerun's
// "already pivoted to this digest" skip. /run is per boot, which is exactly the scope we want:
// after a reboot the booted /usr is the old one again and the pivot must run again.
import { mkdirSync, readFileSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { isErrno } from './errors.ts';

export const PHASES = [
  'preflight',
  'resolve',
  'pull',
  'etc-plan',
  'selinux',
  'mount',
  'etc-apply',
  'refresh',
  'isolate',
] as const;
export type PhaseName = (typeof PHASES)[number];

export type PhaseResult = 'running' | 'done' | 'skipped' | 'failed';
export type RunResult = 'running' | 'done' | 'skipped' | 'failed';
/** Why a run had nothing to do: a skipIfPathExists path exists, or this boot already pivoted. */
export type SkipKind = 'path-exists' | 'already-pivoted';

export interface PhaseRecord {
  name: PhaseName;
  startedAt: string;
  endedAt?: string;
  seconds?: number;
  result: PhaseResult;
  /** Small structured facts: bytes, counts, digests. Never secrets. */
  facts?: Record<string, unknown>;
}

export interface StateError {
  kind: string;
  message: string;
  fix: string;
  exitCode: number;
  path?: string;
  field?: string;
  line: string;
}

export interface PivotState {
  version: 1;
  bootId: string;
  pid: number;
  mode: 'isolate' | 'service';
  startedAt: string;
  updatedAt: string;
  /** 1 for the first run this boot; counts up while runs keep failing. */
  attempt?: number;
  result: RunResult;
  /** Why the run was skipped, when it was. */
  skipReason?: string;
  skipKind?: SkipKind;
  image?: { reference: string; digest?: string; releaseImage?: string };
  phases: PhaseRecord[];
  error?: StateError;
  /** The phase the agent is in, mirrored to sd_notify STATUS=. */
  current?: string;
}

export const STATE_FILE = 'state.json';
/** Per boot, as the state must be (see the top of this file); config `stateDir` defaults to it. */
export const DEFAULT_STATE_DIR = '/run/node-image-pivot';

export function readBootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return 'unknown';
  }
}

export function readState(stateDir: string): PivotState | undefined {
  try {
    return JSON.parse(readFileSync(join(stateDir, STATE_FILE), 'utf8')) as PivotState;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    // A torn or foreign file is treated as absent; the next write replaces it atomically.
    if (err instanceof SyntaxError) return undefined;
    throw err;
  }
}

/** Atomic replace: a reader (status, the generator) never sees a half-written file. */
export function writeState(stateDir: string, state: PivotState): void {
  const file = join(stateDir, STATE_FILE);
  mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o644 });
  const fd = openSync(tmp, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
}

/** Keeps the state file current as phases start and end. One instance per run. */
export class StateRecorder {
  readonly state: PivotState;
  private readonly stateDir: string;
  private readonly now: () => Date;
  private readonly persist: boolean;

  /** `persist: false` keeps the record in memory only (a dry run writes no state file). */
  constructor(stateDir: string, mode: PivotState['mode'], opts: { attempt?: number; bootId?: string; now?: () => Date; persist?: boolean } = {}) {
    this.stateDir = stateDir;
    this.now = opts.now ?? (() => new Date());
    this.persist = opts.persist ?? true;
    const t = this.now().toISOString();
    this.state = {
      version: 1,
      bootId: opts.bootId ?? readBootId(),
      pid: process.pid,
      mode,
      startedAt: t,
      updatedAt: t,
      attempt: opts.attempt ?? 1,
      result: 'running',
      phases: [],
    };
    this.flush();
  }

  flush(): void {
    this.state.updatedAt = this.now().toISOString();
    if (this.persist) writeState(this.stateDir, this.state);
  }

  startPhase(name: PhaseName): PhaseRecord {
    const rec: PhaseRecord = { name, startedAt: this.now().toISOString(), result: 'running' };
    this.state.phases.push(rec);
    this.state.current = name;
    this.flush();
    return rec;
  }

  endPhase(rec: PhaseRecord, result: PhaseResult, facts?: Record<string, unknown>): void {
    const end = this.now();
    rec.endedAt = end.toISOString();
    rec.seconds = Math.round((end.getTime() - Date.parse(rec.startedAt)) / 10) / 100;
    rec.result = result;
    if (facts) rec.facts = { ...rec.facts, ...facts };
    this.flush();
  }

  setImage(image: PivotState['image']): void {
    this.state.image = image;
    this.flush();
  }

  finish(result: RunResult, extra: { error?: StateError; skipReason?: string; skipKind?: SkipKind } = {}): void {
    this.state.result = result;
    delete this.state.current;
    if (extra.error) this.state.error = extra.error;
    if (extra.skipReason) this.state.skipReason = extra.skipReason;
    if (extra.skipKind) this.state.skipKind = extra.skipKind;
    this.flush();
  }
}
