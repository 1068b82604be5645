// Which staging a run uses: "full" stages the whole node image, "delta" only what differs from
// the booted /usr (src/unpack/delta/). "auto" picks delta when staging costs RAM, i.e. when the
// root filesystem itself lives in RAM (a live ISO), and full otherwise. The decision is pure over
// mountinfo and one flag; the overlay stacking probe is the one piece of I/O, and it mounts only
// inside a private mount namespace of its own.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { readMountinfo, topMountAt, type MountinfoEntry } from './mountinfo.ts';
import { ownDomainWhenSelinux, spawnInOwnDomain } from './selinux-kernel.ts';

export type StagingSetting = 'full' | 'delta' | 'auto';
export type StagingMode = 'full' | 'delta';

/** The live ISO's own marker (set by its initramfs; PXE boots have no karg, but have this). */
export const OSTREE_LIVE_MARKER = '/run/ostree-live';
const RAM_FS = new Set(['tmpfs', 'ramfs']);

export interface RootFacts {
  /** /run/ostree-live exists. */
  ostreeLive: boolean;
  mountinfo: readonly MountinfoEntry[];
}

/** `upperdir=` of an overlay's super options (mountinfo escapes commas in paths as \054). */
function upperdirOf(superOptions: string): string | undefined {
  for (const opt of superOptions.split(',')) if (opt.startsWith('upperdir=')) return opt.slice('upperdir='.length).replace(/\\054/g, ',');
  return undefined;
}

/** The mount a path lies on: the top mount at the longest mount point containing it. */
function mountHolding(entries: readonly MountinfoEntry[], path: string): MountinfoEntry | undefined {
  let best: string | undefined;
  for (const e of entries) {
    const covers = e.mountPoint === '/' || path === e.mountPoint || path.startsWith(`${e.mountPoint}/`);
    if (covers && (best === undefined || e.mountPoint.length > best.length)) best = e.mountPoint;
  }
  return best === undefined ? undefined : topMountAt([...entries], best);
}

/** PURE: does the root filesystem live in RAM, and why we think so. */
export function rootInRam(facts: RootFacts): { inRam: boolean; why: string } {
  if (facts.ostreeLive) return { inRam: true, why: `${OSTREE_LIVE_MARKER} exists (a live ISO or PXE boot)` };
  const root = topMountAt([...facts.mountinfo], '/');
  if (!root) return { inRam: false, why: 'no mount at / in mountinfo' };
  if (RAM_FS.has(root.fsType)) return { inRam: true, why: `/ is ${root.fsType}` };
  if (root.fsType === 'overlay') {
    const upper = upperdirOf(root.superOptions);
    if (!upper) return { inRam: false, why: '/ is a read-only overlay (no upperdir)' };
    const holder = mountHolding(facts.mountinfo, upper);
    if (holder && RAM_FS.has(holder.fsType)) return { inRam: true, why: `/ is an overlay whose upperdir ${upper} is on ${holder.fsType}` };
    return { inRam: false, why: `/ is an overlay whose upperdir ${upper} is on ${holder ? holder.fsType : 'a filesystem not in this namespace'}` };
  }
  return { inRam: false, why: `/ is ${root.fsType}` };
}

/** PURE: the staging a run would use before the stacking check. */
export function chooseStaging(setting: StagingSetting, facts: RootFacts): { mode: StagingMode; reason: string } {
  if (setting === 'full') return { mode: 'full', reason: 'staging is "full" in the config' };
  if (setting === 'delta') return { mode: 'delta', reason: 'staging is "delta" in the config' };
  const ram = rootInRam(facts);
  return ram.inRam
    ? { mode: 'delta', reason: `staging "auto": the root lives in RAM (${ram.why}), so only what differs from the booted /usr is staged` }
    : { mode: 'full', reason: `staging "auto": the root is not in RAM (${ram.why})` };
}

export type StackingProbe = { ok: true } | { ok: false; why: string };

/**
 * PURE: the trial mount's command line. Under SELinux, mount(8) would enter mount_t, which may
 * mount only on mountpoint types, not on the probe's directory below the state directory; every
 * other mount of the agent runs in its own domain (spawnInOwnDomain), but that exec context is
 * spent on `unshare`'s exec, so `runcon` carries it to the `mount` that unshare execs.
 */
export function stackProbeArgv(lower: string, scratch: string, ownContext: string | undefined): string[] {
  return [
    'unshare', '-m', '--propagation', 'private',
    ...(ownContext ? ['runcon', ownContext] : []),
    'mount', '-t', 'overlay', '-o', `ro,lowerdir=${join(scratch, 'top')}:${lower}`, 'overlay', join(scratch, 'mnt'),
  ];
}

/**
 * Asks the kernel whether an overlay with `lower` as its lowest layer can be mounted: on a live
 * root, / (and so the booted /usr) is already an overlay, and overlayfs refuses a stack deeper
 * than FILESYSTEM_MAX_STACK_DEPTH (2) with "maximum fs stacking depth exceeded" (systemd#40318:
 * composefs under a live overlay on 6.18). The trial mount lives in a private mount namespace
 * that ends with the `mount` process, so nothing of it is ever visible on the host.
 */
export function probeOverlayStacking(lower: string, scratchParent: string, ownContext = ownDomainWhenSelinux()): StackingProbe {
  mkdirSync(scratchParent, { recursive: true });
  const scratch = mkdtempSync(join(scratchParent, 'stack-probe-'));
  try {
    for (const d of ['top', 'mnt']) mkdirSync(join(scratch, d));
    const [cmd, ...args] = stackProbeArgv(lower, scratch, ownContext);
    const r = spawnInOwnDomain(() => spawnSync(cmd!, args, { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] }));
    if (r.status === 0) return { ok: true };
    const said = (r.stderr || r.error?.message || `exit ${String(r.status)}`).trim().split('\n')[0];
    return { ok: false, why: `the kernel refused an overlay over ${lower} (${said}); with / already an overlay this is usually "maximum fs stacking depth exceeded" (see dmesg)` };
  } finally {
    if (existsSync(scratch)) rmSync(scratch, { recursive: true, force: true });
  }
}

/** The final mode: delta falls back to full, with the reason, when the kernel refuses the stack. */
export function decideStaging(setting: StagingSetting, facts: RootFacts, probe: () => StackingProbe): { mode: StagingMode; reason: string; fellBack: boolean } {
  const chosen = chooseStaging(setting, facts);
  if (chosen.mode === 'full') return { ...chosen, fellBack: false };
  const p = probe();
  if (p.ok) return { ...chosen, fellBack: false };
  return { mode: 'full', reason: `${chosen.reason}; falling back to full staging: ${p.why}`, fellBack: true };
}

export interface StagingChoice {
  mode: StagingMode;
  /** One sentence for the log, the state file and `status`. */
  reason: string;
  fellBack: boolean;
}

/**
 * This host's answer: the live marker and mountinfo decide, and delta asks the kernel first
 * whether it will stack an overlay on the booted /usr (the trial mount goes below `scratchParent`,
 * the staging directory, which is ready by then).
 */
export function decideStagingOnHost(setting: StagingSetting, usr: string, scratchParent: string): StagingChoice {
  const facts: RootFacts = { ostreeLive: existsSync(OSTREE_LIVE_MARKER), mountinfo: readMountinfo() };
  return decideStaging(setting, facts, () => probeOverlayStacking(usr, scratchParent));
}
