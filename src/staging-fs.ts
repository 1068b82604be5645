// Where staging lives, and how much room it has. On a live ISO everything written is RAM, and
// the default stagingDir sits on /run, a tmpfs that systemd and initramfs-tools size at 20% of
// RAM and mount nosuid,nodev (initramfs-tools adds noexec). A real node image needs about 1 GB
// of blobs plus 2.2 GB of tree: on a 16 GiB host that does not fit a fifth of RAM, while the
// RAM itself has room. So when stagingDir would sit on a tmpfs, the agent mounts a tmpfs of its
// own there, capped at what RAM can spare (the shell version ended up with a dedicated 5 G
// tmpfs; this one is sized to the host). The space check then counts RAM, not the cap alone.
import { mkdirSync, readdirSync, readFileSync, statfsSync } from 'node:fs';
import { normalize } from 'node:path';
import { PivotError, isErrno } from './errors.ts';
import { failpointAsync } from './failpoints.ts';
import { log } from './log.ts';
import { runMountCommand } from './mount-recovery.ts';
import { mountHolding, readMountinfo, topMountAt, type MountinfoEntry } from './mountinfo.ts';

/** The source name of the agent's own staging tmpfs, so a rerun knows it as its own. */
export const STAGING_TMPFS_SOURCE = 'node-image-pivot-staging';
const RAM_FILESYSTEMS: ReadonlySet<string> = new Set(['tmpfs', 'ramfs']);

export type StagingFsPlan =
  | { action: 'mount'; sizeBytes: number; reason: string }
  | { action: 'reuse'; reason: string }
  | { action: 'keep'; inRam: boolean; reason: string };

export interface StagingFsInput {
  stagingDir: string;
  entries: MountinfoEntry[];
  /** Does stagingDir hold anything yet (an older run's files, which a mount would hide)? */
  stagingDirEmpty: boolean;
  memTotalBytes: number;
  /** RAM left to the node and the agent while staging is full. */
  reserveBytes: number;
  mode: 'auto' | 'off';
}

const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(0)} MiB`;

/** PURE: give staging a tmpfs of its own, reuse the one a previous run made, or keep what is there. */
export function planStagingFs(input: StagingFsInput): StagingFsPlan {
  const dir = normalize(input.stagingDir);
  const at = topMountAt(input.entries, dir);
  if (at?.fsType === 'tmpfs' && at.source === STAGING_TMPFS_SOURCE) return { action: 'reuse', reason: 'the staging tmpfs of an earlier run this boot' };
  const holder = at ?? mountHolding(input.entries, dir);
  const inRam = holder !== undefined && RAM_FILESYSTEMS.has(holder.fsType);
  if (at) return { action: 'keep', inRam, reason: `stagingDir is a ${at.fsType} mount of its own` };
  const on = holder ? `${holder.fsType} at ${holder.mountPoint}` : 'an unknown filesystem';
  if (!inRam) return { action: 'keep', inRam, reason: `stagingDir is on ${on}, not in RAM` };
  if (input.mode === 'off') return { action: 'keep', inRam, reason: `stagingTmpfs is off; staging shares ${on}` };
  if (!input.stagingDirEmpty) return { action: 'keep', inRam, reason: `stagingDir already holds files on ${on}; a mount would hide them` };
  const sizeBytes = Math.floor(Math.max(0, input.memTotalBytes - input.reserveBytes) / 4096) * 4096;
  if (sizeBytes < 64 * 1024 ** 2) return { action: 'keep', inRam, reason: `RAM (${mib(input.memTotalBytes)}) leaves no room beyond the reserve of ${mib(input.reserveBytes)}` };
  return { action: 'mount', sizeBytes, reason: `stagingDir would share ${on} (sized by its own cap); RAM is what staging costs, so it gets a tmpfs of its own` };
}

/**
 * PURE: the bytes staging may still use. In RAM that is also bounded by what the kernel can
 * give without eating into the reserve (tmpfs pages cannot be reclaimed without swap).
 */
export function stagingFreeBytes(statfsFreeBytes: number, inRam: boolean, memAvailableBytes: number, reserveBytes: number): number {
  if (!inRam) return statfsFreeBytes;
  return Math.max(0, Math.min(statfsFreeBytes, memAvailableBytes - reserveBytes));
}

/** PURE: /proc/meminfo's MemTotal and MemAvailable, in bytes. */
export function parseMeminfo(text: string): { totalBytes: number; availableBytes: number } {
  const kib = (key: string): number => {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB$`, 'm').exec(text);
    if (!m) throw new PivotError('preflight', `/proc/meminfo has no ${key}`, { path: '/proc/meminfo', fix: 'run on a Linux kernel with /proc mounted' });
    return Number(m[1]) * 1024;
  };
  return { totalBytes: kib('MemTotal'), availableBytes: kib('MemAvailable') };
}

export interface StagingRoom {
  freeBytes: number;
  facts: { filesystem: string; inRam: boolean; reason: string; sizeBytes?: number; reserveBytes?: number };
}

/** Creates stagingDir (naming the node's problem when it cannot), refusing nothing else. */
function ensureStagingDir(dir: string): void {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (caught) {
    // A recursive mkdir reports ENOENT for a read-only parent; a plain one says what is wrong.
    let err = caught;
    if (isErrno(err, 'ENOENT')) {
      try {
        mkdirSync(dir, { mode: 0o700 });
        return;
      } catch (plain) {
        err = plain;
      }
    }
    // A read-only, full or foreign-owned staging filesystem is the node's setup, not a bug.
    if (!isErrno(err, 'EROFS', 'ENOSPC', 'EDQUOT', 'EACCES', 'EPERM', 'ENOTDIR', 'ENOENT')) throw err;
    throw new PivotError('preflight', `cannot use the staging directory: ${err.code} (${err.message})`, {
      path: dir, cause: err,
      fix: 'point stagingDir at a writable filesystem with room (a live ISO stages in RAM, under /run)',
    });
  }
}

/** Makes stagingDir ready (its own tmpfs when it would sit in RAM) and says how much room it has. */
export async function prepareStagingFs(cfg: { stagingDir: string; stagingTmpfs: 'auto' | 'off'; stagingReserveMiB: number }): Promise<StagingRoom> {
  const dir = normalize(cfg.stagingDir);
  ensureStagingDir(dir);
  const mem = parseMeminfo(readFileSync('/proc/meminfo', 'utf8'));
  const reserveBytes = cfg.stagingReserveMiB * 1024 ** 2;
  const plan = planStagingFs({
    stagingDir: dir, entries: readMountinfo(), stagingDirEmpty: readdirSync(dir).length === 0,
    memTotalBytes: mem.totalBytes, reserveBytes, mode: cfg.stagingTmpfs,
  });
  if (plan.action === 'mount') {
    await failpointAsync('staging.mount');
    // exec/suid/dev, unlike /run: the staged tree becomes /usr (src/mount.ts sets its flags again).
    await runMountCommand('mount', ['-t', 'tmpfs', '-o', `mode=0700,size=${plan.sizeBytes}`, STAGING_TMPFS_SOURCE, dir], dir);
    log().info({ stagingDir: dir, sizeBytes: plan.sizeBytes, reserveBytes }, `staging in its own tmpfs of ${mib(plan.sizeBytes)}: ${plan.reason}`);
  } else {
    log().info({ stagingDir: dir }, `staging: ${plan.reason}`);
  }
  const inRam = plan.action === 'keep' ? plan.inRam : true;
  const s = statfsSync(dir);
  const statfsFree = Number(s.bavail) * Number(s.bsize);
  return {
    freeBytes: stagingFreeBytes(statfsFree, inRam, mem.availableBytes, reserveBytes),
    facts: {
      filesystem: plan.action === 'keep' ? (inRam ? 'shared tmpfs' : 'disk') : 'own tmpfs',
      inRam, reason: plan.reason,
      ...(plan.action === 'mount' ? { sizeBytes: plan.sizeBytes } : {}),
      ...(inRam ? { reserveBytes } : {}),
    },
  };
}

/** Bytes the staging filesystem holds now (what staging costs in RAM when it has its own tmpfs). */
export function stagingUsedBytes(dir: string): number {
  const s = statfsSync(dir);
  return (Number(s.blocks) - Number(s.bfree)) * Number(s.bsize);
}

/** An errno code anywhere in the chain: the unpacker and the blob cache wrap the syscall's error. */
function errnoIn(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e !== undefined && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    if (isErrno(e, 'ENOSPC', 'EDQUOT')) return (e as NodeJS.ErrnoException).code;
    const code = e instanceof PivotError ? e.facts.code : undefined;
    if (code === 'ENOSPC' || code === 'EDQUOT') return code;
  }
  return undefined;
}

/**
 * A pull that ran out of room is the space check's failure found late (exit 9, not an unpack
 * error): the delta's size is unknown until its layers have streamed, and a full staging can
 * expand beyond spaceFactor. The failed pull has removed its partial tree by now, so the
 * system is all old; the verified blobs stay for the next attempt.
 */
export function stagingFullError(err: unknown, at: { stagingDir: string; mode: 'full' | 'delta'; compressedBytes: number }): PivotError | undefined {
  const code = errnoIn(err);
  if (!code) return undefined;
  const mib = (n: number): string => `${(n / 1024 ** 2).toFixed(0)} MiB`;
  let size = '';
  try {
    const s = statfsSync(at.stagingDir);
    size = ` (${mib(Number(s.blocks) * Number(s.bsize))}, ${mib(stagingUsedBytes(at.stagingDir))} still used by the blob cache and other files)`;
  } catch { /* the numbers are a courtesy */ }
  const inner = err instanceof Error ? err.message : String(err);
  return new PivotError('preflight', `the staging filesystem at ${at.stagingDir}${size} filled up during the ${at.mode} pull of ${mib(at.compressedBytes)} compressed (${code}): ${inner}`, {
    path: at.stagingDir,
    fix: 'give the node more RAM or point stagingDir at a larger filesystem; nothing changed, and the verified blobs are kept for the next attempt',
    facts: { code, stagingMode: at.mode, compressedBytes: at.compressedBytes },
    cause: err,
  });
}
