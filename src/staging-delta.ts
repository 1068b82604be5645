// What a staged tree is (full, or a delta over the booted /usr) and the delta-only steps of the
// pull around src/unpack/delta: the writer for the unpack, the /etc defaults of ostree images,
// and the record a rerun reads to mount a reused tree the way it was staged.
import { existsSync, lstatSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PivotError, isErrno } from './errors.ts';
import { usrRelative } from './mount.ts';
import { DeltaTarget, type DeltaStats, type LayerTarget } from './unpack/index.ts';
import { markOpaque } from './unpack/delta/overlay-marks.ts';
import type { StagingChoice, StagingMode } from './staging-mode.ts';

/** Inside the staged root, beside usr/: only usr/ is ever mounted. */
export const STAGING_RECORD = '.node-image-pivot-staging.json';

/** The booted ostree repo, whose objects name booted content without reading it. */
const BOOTED_REPO = '/sysroot/ostree/repo';

export interface StagingRecord {
  mode: StagingMode;
  reason: string;
  delta?: DeltaStats;
}

export function writeStagingRecord(root: string, record: StagingRecord): void {
  writeFileSync(join(root, STAGING_RECORD), `${JSON.stringify(record)}\n`, { mode: 0o644 });
}

/**
 * How a finished tree was staged. A tree without a record predates delta staging, so it is full;
 * an unreadable one is refused rather than guessed, since mounting a full tree as a delta (or
 * the reverse) shows a /usr that is neither old nor new.
 */
export function readStagingRecord(root: string): StagingRecord {
  const path = join(root, STAGING_RECORD);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { mode: 'full', reason: 'staged before delta staging existed' };
    throw err;
  }
  try {
    const r = JSON.parse(text) as Partial<StagingRecord>;
    if (r.mode === 'full' || r.mode === 'delta') return { mode: r.mode, reason: String(r.reason ?? ''), ...(r.delta ? { delta: r.delta } : {}) };
  } catch { /* named below */ }
  throw new PivotError('unpack', `the staged tree's record ${path} is unreadable, so it is unknown whether it is a delta`, {
    path, fix: `remove ${root} and run again: the pull stages it anew`,
  });
}

/** The writer for a delta unpack, and a way to read its counts once it is done. */
export function deltaWriter(bootedUsr: string, opts: { allowDevices: boolean; preserve: readonly string[] }): { targetAt: (dest: string) => LayerTarget; stats: () => DeltaStats | undefined } {
  let target: DeltaTarget | undefined;
  return {
    targetAt: (dest) => {
      target = new DeltaTarget(dest, {
        bootedUsr,
        ...(existsSync(join(BOOTED_REPO, 'objects')) ? { bootedRepo: BOOTED_REPO } : {}),
        allowDevices: opts.allowDevices,
        isRoot: process.getuid?.() === 0,
        writeInFull: ['usr/etc'],
        // The same paths, read the same way, as the mount plan's preserved binds.
        neverHide: opts.preserve.map((p) => `usr/${usrRelative(p)}`),
      });
      return target;
    },
    stats: () => target?.stats,
  };
}

/**
 * ostree-native images export /usr/etc as /etc. In a delta the unpack has written that etc/ in
 * full, and finished usr/ with a whiteout at usr/etc (the image has no usr/etc of its own), so
 * the whiteout gives way to the complete defaults, made opaque: the overlay must show the node
 * image's /usr/etc alone, not merged with the booted one.
 */
export function moveDeltaEtcDefaults(root: string): boolean {
  const etc = join(root, 'etc');
  const usrEtc = join(root, 'usr/etc');
  if (!lstatSync(etc, { throwIfNoEntry: false })?.isDirectory()) return false;
  const there = lstatSync(usrEtc, { throwIfNoEntry: false });
  if (there && !(there.isCharacterDevice() && there.rdev === 0)) return false;
  if (there) unlinkSync(usrEtc);
  renameSync(etc, usrEtc);
  markOpaque(usrEtc);
  return true;
}

/** `mode` with its reason, as the pull phase reports it. */
export function stagingFacts(choice: Pick<StagingChoice, 'mode' | 'reason'>, delta?: DeltaStats): Record<string, unknown> {
  return { stagingModeReason: choice.reason, ...(delta ? { delta } : {}) };
}
