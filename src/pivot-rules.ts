// Pure: the pivot's decisions, apart from its I/O (src/pivot.ts runs them, test/pivot-rules.test.ts
// pins them): whether to skip, which attempt this is and how long it waits, whether staging has
// room, whether the isolate is needed.
import type { PivotState, SkipKind } from './state.ts';
import type { TargetStates } from './pivot-steps.ts';

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

/**
 * Pure: enough room to stage? Returns the shortfall message or undefined. Full staging needs the
 * compressed size times `factor` (blobs plus the expanded tree); delta staging (factor 1) needs at
 * least the compressed size, since the blob cache alone holds that until the tree is complete
 * and the delta's size is unknown until the layers have streamed: if the delta then does not
 * fit, the pull fails on ENOSPC with exit 9, all old.
 */
export function spaceShortfall(availableBytes: number, compressedBytes: number, factor: number, inRam = false, mode: 'full' | 'delta' = 'full'): string | undefined {
  const needed = Math.ceil(compressedBytes * factor);
  if (availableBytes >= needed) return undefined;
  const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(0)} MiB`;
  const where = inRam ? ' in RAM (MemAvailable minus stagingReserveMiB, or the tmpfs cap)' : '';
  const why = mode === 'delta' ? `${mib(compressedBytes)} compressed, the least delta staging can need` : `${mib(compressedBytes)} compressed x spaceFactor ${factor}`;
  return `${mode === 'delta' ? 'delta staging' : 'staging'} needs ${mib(needed)} (${why}) but only ${mib(availableBytes)} is free${where}`;
}

/**
 * Once the generator made the pivot target the boot target, only the isolate leaves it. When the
 * isolate target is active and the pivot target is not, the boot already moved on (service mode,
 * or a rerun after the isolate): nothing to do.
 */
export function isolateSkipReason(target: string, states: TargetStates): string | undefined {
  return states.target === 'active' && states.pivotTarget !== 'active' ? `${target} is already active` : undefined;
}
