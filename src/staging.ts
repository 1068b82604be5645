// The staging directory: one tree per image digest (stagingDir/<hex>), built in <hex>.unpacked and
// renamed when complete, the verified blob cache in blobs/ until then. The pivot's pull step.
import { existsSync, lstatSync, readdirSync, realpathSync, renameSync, rmSync } from 'node:fs';
import { basename, join } from 'node:path';
import type { Config } from './config.ts';
import { PivotError } from './errors.ts';
import { isUsrPivotedEitherMode } from './mount.ts';
import { deltaWriter, moveDeltaEtcDefaults, readStagingRecord, stagingFacts, writeStagingRecord } from './staging-delta.ts';
import type { StagingChoice } from './staging-mode.ts';
import { removeTreeWithinMount } from './mount-recovery.ts';
import { prepareStagingFs, stagingFullError, stagingUsedBytes, type StagingRoom } from './staging-fs.ts';
import type { ResolvedImage, StagedTree } from './pivot-steps.ts';
import { pacedCollections } from './gc-pacer.ts';
import { pullProgress, type Progress } from './progress.ts';
import { pullToDest, type PullToDestSummary } from './pull.ts';
import type { RegistryOptions } from './registry/index.ts';

const hex = (digest: string): string => digest.replace(/^sha256:/, '');

export function stagedPath(cfg: Config, digest: string): string {
  return join(cfg.stagingDir, hex(digest));
}

/** Mount points appear in /proc/self/mountinfo with symlinks resolved. */
export function resolvedPath(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
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

/**
 * Makes stagingDir ready (a tmpfs of its own when it would sit in RAM, src/staging-fs.ts) and
 * says how much room it has for `stagedRoot`, counting what stageImage removes before it stages
 * and the blobs it has cached already.
 */
export async function stagingRoom(cfg: Config, stagedRoot: string): Promise<StagingRoom> {
  const room = await prepareStagingFs(cfg);
  // Verified blobs already in the cache count too: they are part of what the check asks room
  // for, so a rerun after a pull that filled the staging filesystem is not refused for them.
  return { ...room, freeBytes: room.freeBytes + reclaimableStagingBytes(cfg.stagingDir, [basename(stagedRoot)]) };
}

/** A bootc image's identity and what bootc's rules changed, for the pull phase's facts. */
function bootcFacts(s: PullToDestSummary): Record<string, unknown> {
  return {
    ...(s.bootc?.ostreeCommit ? { ostreeCommit: s.bootc.ostreeCommit } : {}),
    ...(s.bootc?.version ? { imageVersion: s.bootc.version } : {}),
    derivedLayers: (s.bootc?.layerCount ?? 0) - (s.bootc?.firstDerivedLayer ?? 0),
    ...(Object.keys(s.filtered).length ? { filtered: s.filtered } : {}),
  };
}

/** How this pull stages: the run's choice, and for delta the booted /usr to compare with. */
export interface StageRequest {
  choice?: StagingChoice;
  /** The pivot's private read-only bind of the booted /usr: a delta's lower layer (made by then in delta mode). */
  bootedUsr: string;
}

/**
 * Pulls `image.pinned` into stagingDir/<digest>, in full or as a delta over the booted /usr, or
 * reuses the tree a previous run finished (in the mode its record names). Refuses a second image
 * while /usr shows a staged one, and an image with no usr/.
 */
export async function stageImage(cfg: Config, image: ResolvedImage, registry: RegistryOptions, progress: Progress, req: StageRequest): Promise<StagedTree> {
  const root = stagedPath(cfg, image.manifestDigest);
  const others = (existsSync(cfg.stagingDir) ? readdirSync(cfg.stagingDir) : [])
    .filter((name) => name !== 'blobs' && name !== hex(image.manifestDigest));
  // A staged tree that /usr shows is the running system: never delete it, and do not stack
  // a second pivot on it (its /etc merge would take the first image's defaults for local
  // changes). Only a staged tree is named by a bare digest; `.unpacked`, `.mnt` are scratch.
  const live = others.find((name) => /^[0-9a-f]{64}$/.test(name) && isUsrPivotedEitherMode('/usr', join(cfg.stagingDir, name), req.bootedUsr));
  if (live) {
    // A config error (exit 2, not retried): the config names an image this boot cannot take.
    throw new PivotError('config', `/usr already shows another node image (sha256:${live}) this boot`, {
      path: join(cfg.stagingDir, live),
      field: cfg.image ? 'image' : 'releaseImage',
      fix: `reboot to pivot to ${image.manifestDigest}; a second pivot to a different image in one boot is not supported`,
    });
  }
  if (existsSync(root)) {
    const record = readStagingRecord(root);
    return { root, reused: true, mode: record.mode, facts: stagingFacts(record, record.delta) };
  }
  const choice = req.choice ?? { mode: 'full' as const, reason: 'no staging mode was chosen', fellBack: false };
  // Leftovers of interrupted runs and of other images only take RAM on a live ISO.
  // Never across a mount point: an interrupted run's mounts are detached in preflight, and
  // anything still mounted here is not ours to walk into.
  for (const name of others) removeTreeWithinMount(join(resolvedPath(cfg.stagingDir), name));
  const unpacked = `${root}.unpacked`;
  const delta = choice.mode === 'delta' ? deltaWriter(req.bootedUsr, { allowDevices: cfg.allowDevices, preserve: cfg.preserve }) : undefined;
  const summary = await pullToDest(image.pinned, unpacked, registry, {
    limits: cfg.limits,
    allowDevices: cfg.allowDevices,
    keepSysroot: cfg.keepSysroot,
    ...(delta ? { targetAt: delta.targetAt } : {}),
    // `systemctl status` and a terminal show how far the pull is (throttled in Progress).
    onProgress: pullProgress(progress),
  }).catch((err: unknown) => {
    throw stagingFullError(err, { stagingDir: cfg.stagingDir, mode: choice.mode, compressedBytes: image.compressedBytes }) ?? err;
  });
  // ostree-native images export /usr/etc as /etc; the new /usr carries its defaults at
  // usr/etc again, as the base of the next merge and for ostree's own tools.
  if (delta) moveDeltaEtcDefaults(unpacked);
  else if (existsSync(join(unpacked, 'etc')) && !existsSync(join(unpacked, 'usr/etc'))) renameSync(join(unpacked, 'etc'), join(unpacked, 'usr/etc'));
  if (!existsSync(join(unpacked, 'usr'))) {
    rmSync(unpacked, { recursive: true, force: true });
    // The digests matched: the config names the wrong kind of image (exit 2, not retried).
    const field = cfg.image ? 'image' : 'releaseImage';
    throw new PivotError('config', `image ${image.reference} has no usr/ directory`, {
      field, fix: `point ${field} at a bootable node image (an OS image with /usr), not an application image`,
    });
  }
  const deltaStats = delta?.stats();
  // Written before the rename: a finished tree always says how it was staged.
  writeStagingRecord(unpacked, { mode: choice.mode, reason: choice.reason, ...(deltaStats ? { delta: deltaStats } : {}) });
  renameSync(unpacked, root);
  // Verified blobs are only needed until the tree is complete.
  rmSync(join(cfg.stagingDir, 'blobs'), { recursive: true, force: true });
  return {
    root, reused: false, mode: choice.mode,
    facts: {
      layers: summary.layers, entries: summary.entries, compressedBytes: summary.compressedBytes, expandedBytes: summary.expandedBytes, seconds: summary.seconds,
      ...stagingFacts(choice, deltaStats),
      // What staging holds in RAM on a live ISO, and what the pull cost the agent.
      stagingUsedBytes: stagingUsedBytes(cfg.stagingDir), peakRssBytes: process.resourceUsage().maxRSS * 1024, pacedGc: pacedCollections(),
      // `status` shows which ostree commit and image version the node now runs.
      ...(summary.bootc ? bootcFacts(summary) : {}),
    },
  };
}
