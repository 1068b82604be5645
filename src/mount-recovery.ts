// The agent's own mounts, by name, so that a run killed in the mount phase leaks nothing the
// next run cannot find. A Node process cannot assemble in a private namespace and move the
// result into the host's (that needs open_tree/move_mount), so every mount the agent makes sits
// at a fixed path, and each run starts by reading /proc/self/mountinfo and detaching what an
// earlier run left there (deepest first), and by checking the booted-usr bind before reusing it.
import { lstatSync, mkdirSync, readdirSync, rmdirSync, unlinkSync, type Stats } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { PivotError, isErrno } from './errors.ts';
import { failpointAsync } from './failpoints.ts';
import { log } from './log.ts';
import { readMountinfo, viewAt, type MountinfoEntry } from './mountinfo.ts';
import { spawnInOwnDomain } from './selinux-kernel.ts';

export interface OwnMounts {
  /** What the pivot switches, /usr. */
  usr: string;
  /** The read-only, private bind of the booted /usr: the base of /etc merges. */
  bootedUsr: string;
  /** Where the new /usr is assembled before the one visible move. */
  assembly: string;
  /** Staged trees live here as `<64 hex>`; older versions assembled at `<64 hex>.mnt`. */
  stagingDir: string;
}

const STAGED_NAME = /^[0-9a-f]{64}(\.mnt|\.unpacked)?$/;

/** PURE: is this mount point one the agent makes (other than the booted-usr bind)? */
export function isLeftoverMountPoint(own: OwnMounts, mountPoint: string): boolean {
  if (mountPoint === own.assembly || mountPoint.startsWith(`${own.assembly}/`)) return true;
  if (!mountPoint.startsWith(`${own.stagingDir}/`)) return false;
  return STAGED_NAME.test(mountPoint.slice(own.stagingDir.length + 1).split('/')[0]!);
}

/** PURE: the next leftover to detach: the deepest one, so a parent never goes before its child. */
export function nextLeftover(entries: MountinfoEntry[], own: OwnMounts): string | undefined {
  const depth = (p: string): number => p.split('/').length;
  return entries.map((e) => e.mountPoint).filter((p) => isLeftoverMountPoint(own, p))
    .sort((a, b) => depth(b) - depth(a) || (a < b ? -1 : 1))[0];
}

/**
 * PURE: why the mount at own.bootedUsr cannot be reused, 'absent' when there is none, undefined
 * when it is fine. Only meaningful while /usr still shows the booted tree.
 */
export function bootedUsrProblem(entries: MountinfoEntry[], own: OwnMounts): string | 'absent' | undefined {
  const here = entries.filter((e) => e.mountPoint === own.bootedUsr);
  if (here.length === 0) return 'absent';
  if (here.length > 1) return `${here.length} mounts are stacked there`;
  const [m] = here as [MountinfoEntry];
  const booted = viewAt(entries, own.usr);
  if (!booted || m.device !== booted.device || m.root !== booted.root) {
    return `it shows ${m.device}:${m.root}, not the booted ${own.usr} (${booted ? `${booted.device}:${booted.root}` : 'unknown'})`;
  }
  if (!m.options.split(',').includes('ro')) return 'it is writable';
  if (m.optional.length > 0) return `it is not private (${m.optional.join(' ')})`;
  return undefined;
}

function mountError(message: string, path: string, fix: string, cause?: unknown): PivotError {
  return new PivotError('mount', message, { path, fix, ...(cause === undefined ? {} : { cause }) });
}

export async function runMountCommand(cmd: 'mount' | 'umount', args: string[], path: string): Promise<void> {
  // In the agent's own domain, as all of its mounts (src/selinux-kernel.ts spawnInOwnDomain).
  const r = await spawnInOwnDomain(() => execa(cmd, args, { reject: false, stdin: 'ignore', all: true }));
  if (r.exitCode !== 0) {
    throw mountError(`${cmd} ${args.join(' ')} failed: ${(r.all ?? '').trim().split('\n')[0] || `exit ${String(r.exitCode)}`}`, path,
      'check that the agent runs as root in the host mount namespace (no MountFlags=, PrivateMounts=)');
  }
}

/** Detaches every leftover of an earlier run, deepest first. Returns what it detached. */
export async function releaseLeftoverMounts(own: OwnMounts): Promise<string[]> {
  const detached: string[] = [];
  // A lazy detach also takes the children, so the table is read again after each one.
  for (let next = nextLeftover(readMountinfo(), own); next !== undefined; next = nextLeftover(readMountinfo(), own)) {
    if (detached.length >= 256) throw mountError('leftover mounts do not go away', next, `detach them by hand: umount -R -l ${next}`);
    await failpointAsync('mount.release');
    await runMountCommand('umount', ['--lazy', next], next);
    detached.push(next);
  }
  if (detached.length) log().warn({ phase: 'mount', detached }, `detached ${detached.length} mounts an interrupted run left behind`);
  return detached;
}

/** Makes own.bootedUsr a verified read-only private bind of the booted /usr. Call before the switch. */
export async function ensureBootedUsr(own: OwnMounts): Promise<'reused' | 'made'> {
  const problem = bootedUsrProblem(readMountinfo(), own);
  if (problem === undefined) return 'reused';
  if (problem !== 'absent') {
    log().warn({ phase: 'mount', path: own.bootedUsr }, `not reusing ${own.bootedUsr}: ${problem}; making it again`);
    while (readMountinfo().some((e) => e.mountPoint === own.bootedUsr)) await runMountCommand('umount', ['--lazy', own.bootedUsr], own.bootedUsr);
  }
  mkdirSync(own.bootedUsr, { recursive: true, mode: 0o755 });
  for (const args of [['--bind', own.usr, own.bootedUsr], ['--make-private', own.bootedUsr], ['-o', 'remount,bind,ro', own.bootedUsr]]) {
    await failpointAsync('mount.booted-usr');
    await runMountCommand('mount', args, own.bootedUsr);
  }
  const after = bootedUsrProblem(readMountinfo(), own);
  if (after !== undefined) {
    throw mountError(`cannot keep the booted ${own.usr} visible at ${own.bootedUsr}: ${after}`, own.bootedUsr,
      'make sure the agent runs as root in the host mount namespace (no PrivateMounts=/MountFlags= on its unit)');
  }
  return 'made';
}

/**
 * `rm -r` that never crosses into another mount: it refuses when a mount point sits at or below
 * `path`, and checks every directory's st_dev on the way down.
 */
export function removeTreeWithinMount(path: string, entries: MountinfoEntry[] = readMountinfo()): void {
  const inside = entries.find((e) => e.mountPoint === path || e.mountPoint.startsWith(`${path}/`));
  if (inside) {
    throw mountError(`refusing to delete ${path}: ${inside.mountPoint} is a mount point`, inside.mountPoint,
      `unmount it first (umount -R -l ${inside.mountPoint}), then rerun`);
  }
  let top: Stats;
  try {
    top = lstatSync(path);
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return;
    throw err;
  }
  const walk = (p: string, st: Stats): void => {
    if (!st.isDirectory()) {
      unlinkSync(p);
      return;
    }
    if (st.dev !== top.dev) throw mountError(`refusing to delete ${p}: it is on another filesystem`, p, `unmount it first (umount -R -l ${p})`);
    for (const name of readdirSync(p)) walk(join(p, name), lstatSync(join(p, name)));
    rmdirSync(p);
  };
  walk(path, top);
}
