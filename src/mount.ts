// The mount step: the staged image's usr/ replaces what the system sees at /usr, keeping the
// booted paths in `preserve` (the kernel's modules above all) visible.
//
// Like systemd-sysext, everything is assembled in a private place first and the one step that
// changes what the system sees is a single `mount --move`. The private place is a bind of a
// work directory onto itself, made private: the kernel refuses to move a mount whose parent is
// shared (EINVAL), and on a systemd host every mount starts out shared, so the prepared tree
// must not sit under one. A failure before the move leaves the target exactly as it was.
import { lstatSync, rmdirSync, statSync } from 'node:fs';
import { isAbsolute, join, normalize, posix } from 'node:path';
import { DEFAULT_PRESERVE } from './config.ts';
import { PivotError, isErrno } from './errors.ts';
import { failpointAsync } from './failpoints.ts';
import { log } from './log.ts';
import { initDomainWhenSelinux, ownDomainWhenSelinux } from './selinux-kernel.ts';
import { accessFlags, mountHolding, readMountinfo, topMountAt, type MountAccessFlags } from './mountinfo.ts';
import { OVERLAY_MOUNT_UNIT, runOp, type MountOp } from './mount-ops.ts';

/** 'bind' shows the staged usr alone; 'overlay' stacks it as a delta over the booted /usr. */
export type UsrMountMode = 'bind' | 'overlay';

export interface UsrMountInput {
  /** The unpacked image root; its usr/ is the new /usr. */
  stagedRoot: string;
  /** Booted paths under /usr that stay visible. */
  preserve?: string[];
  /** Where the new usr goes. Tests pass a temp dir. */
  target?: string;
  mode?: UsrMountMode;
  /** overlay: the layer under the staged usr (delta staging: the private bind of the booted /usr); default the target. */
  lower?: string;
  /** A scratch directory for the private assembly mount; default `<stagedRoot>.mnt`. */
  workDir?: string;
  /** overlay: PID 1's SELinux context, to mount the overlay in (mount-ops.ts OverlayMounter); default the agent's own. */
  overlayMounterContext?: string;
}

export type PathKind = 'dir' | 'file' | 'symlink' | 'other' | 'missing';
/** What the planner needs to know about the disk, keyed by absolute path (lstat semantics). */
export type PathFacts = Readonly<Record<string, PathKind>>;

export { mountArgv, type MountOp } from './mount-ops.ts';

export interface PreservedPath {
  /** As configured, e.g. /usr/lib/modules. */
  path: string;
  /** The booted content. */
  source: string;
  /** Where it appears inside the assembled tree before the switch. */
  mountpoint: string;
}

export interface UsrMountPlan {
  mode: UsrMountMode;
  target: string;
  stagedUsr: string;
  /** overlay: the layer below the staged usr (the target itself, or the booted-usr bind under a delta). */
  lower: string;
  workDir: string;
  /** The assembled tree's root, inside workDir; it is what gets moved. */
  assembled: string;
  preserved: PreservedPath[];
  warnings: string[];
  /** Nothing here changes what the system sees at the target. */
  prepare: MountOp[];
  /** The single visible step. */
  switch: MountOp;
  /** Releases the now empty assembly area. */
  finish: MountOp[];
}

/** What undoUsrMount needs: the plan that was switched in. */
export interface MountResult {
  plan: UsrMountPlan;
}

function mountError(message: string, path: string, fix: string, cause?: unknown): PivotError {
  return new PivotError('mount', message, { path, fix, ...(cause === undefined ? {} : { cause }) });
}

function requireAbsolute(p: string, what: string): string {
  if (!isAbsolute(p)) throw new PivotError('usage', `${what} must be an absolute path, got ${JSON.stringify(p)}`, { path: p, fix: `pass an absolute ${what}` });
  const n = normalize(p);
  return n.length > 1 ? n.replace(/\/+$/, '') : n;
}

/** `/usr/lib/modules` -> `lib/modules`; anything not strictly under /usr is refused. */
export function usrRelative(p: string): string {
  const rel = posix.relative('/usr', posix.normalize(p));
  if (!p.startsWith('/') || rel === '' || rel.startsWith('..')) {
    throw new PivotError('config', `preserve path ${JSON.stringify(p)} is not under /usr/`, {
      field: 'preserve', path: p, fix: 'list only paths below /usr/, e.g. /usr/lib/modules',
    });
  }
  return rel;
}

/** Every path the planner asks about, in the order a probe should lstat them. */
export function factPaths(input: UsrMountInput): string[] {
  const stagedUsr = join(requireAbsolute(input.stagedRoot, 'stagedRoot'), 'usr');
  const target = requireAbsolute(input.target ?? '/usr', 'target');
  const out = [stagedUsr, target];
  for (const p of input.preserve ?? DEFAULT_PRESERVE) {
    const rel = usrRelative(p);
    out.push(join(target, rel));
    const parts = rel.split('/');
    for (let i = 1; i <= parts.length; i++) out.push(join(stagedUsr, ...parts.slice(0, i)));
  }
  return [...new Set(out)];
}

/** The I/O half of planning. Booted sources are stat()ed (a bind follows their symlinks, which is
 * the booted system's own business); staged paths are lstat()ed, because a symlink there would
 * send a mount outside the staged tree. */
export function probePathFacts(input: UsrMountInput): PathFacts {
  const target = requireAbsolute(input.target ?? '/usr', 'target');
  const facts: Record<string, PathKind> = {};
  for (const p of factPaths(input)) {
    const follow = p === target || p.startsWith(`${target}/`);
    try {
      const st = follow ? statSync(p) : lstatSync(p);
      facts[p] = st.isDirectory() ? 'dir' : st.isFile() ? 'file' : st.isSymbolicLink() ? 'symlink' : 'other';
    } catch (err) {
      if (!isErrno(err, 'ENOENT', 'ENOTDIR')) throw err;
      facts[p] = 'missing';
    }
  }
  return facts;
}

const OVERLAY_UNSAFE = /[,:\\]/;

/** What a /usr without nosuid, nodev or noexec allows; the planner's default. */
const OPEN_ACCESS: MountAccessFlags = { nosuid: false, nodev: false, noexec: false };

/** The access flags of the mount that holds the booted target. */
export function probeUsrAccess(target = '/usr'): MountAccessFlags {
  const holder = mountHolding(readMountinfo(), normalize(target));
  return holder ? accessFlags(holder.options) : OPEN_ACCESS;
}

/** PURE: the ordered mount operations. `facts` comes from probePathFacts (or a test). */
export function planUsrMount(input: UsrMountInput, facts: PathFacts, usrAccess: MountAccessFlags = OPEN_ACCESS): UsrMountPlan {
  const stagedRoot = requireAbsolute(input.stagedRoot, 'stagedRoot');
  const target = requireAbsolute(input.target ?? '/usr', 'target');
  const mode = input.mode ?? 'bind';
  const stagedUsr = join(stagedRoot, 'usr');
  const workDir = requireAbsolute(input.workDir ?? `${stagedRoot}.mnt`, 'workDir');
  const assembled = join(workDir, 'usr');
  const kind = (p: string): PathKind => facts[p] ?? 'missing';

  if (kind(stagedUsr) !== 'dir') {
    throw mountError(`staged tree has no usr directory (${kind(stagedUsr)})`, stagedUsr, 'unpack the node image into the staging directory again');
  }
  if (kind(target) !== 'dir') {
    throw mountError(`mount target is not a directory (${kind(target)})`, target, 'pass a target that is an existing directory');
  }
  for (const [what, p] of [['workDir', workDir], ['target', target]] as const) {
    if (p === stagedRoot || p.startsWith(`${stagedRoot}/`) || stagedRoot.startsWith(`${p}/`)) {
      throw mountError(`${what} overlaps the staged tree`, p, 'keep the staged tree, the work directory and the target apart');
    }
  }
  const lower = requireAbsolute(input.lower ?? target, 'lower');
  if (mode === 'overlay') {
    for (const p of [stagedUsr, lower]) {
      if (OVERLAY_UNSAFE.test(p)) throw mountError('overlay lowerdir paths cannot contain , : or \\', p, 'stage into a directory whose path has none of , : \\');
    }
  }

  const warnings: string[] = [];
  const prepare: MountOp[] = [];
  const preserved: PreservedPath[] = [];
  // Parents first, and a path inside an already preserved one is covered by it.
  const wanted = [...new Set((input.preserve ?? DEFAULT_PRESERVE).map((p) => posix.normalize(p).replace(/(.)\/+$/, '$1')))].sort();
  const chosen: string[] = [];
  for (const p of wanted) {
    const rel = usrRelative(p);
    const covering = chosen.find((c) => p.startsWith(`${c}/`));
    if (covering) {
      warnings.push(`preserve ${p} is inside ${covering}, which is preserved already`);
      continue;
    }
    const source = join(target, rel);
    const sourceKind = kind(source);
    if (sourceKind !== 'dir' && sourceKind !== 'file') {
      warnings.push(`preserve ${p}: ${sourceKind === 'missing' ? 'missing' : `a ${sourceKind}`} in the booted ${target}, skipped`);
      continue;
    }
    const parts = rel.split('/');
    for (let i = 1; i <= parts.length; i++) {
      const here = join(stagedUsr, ...parts.slice(0, i));
      const k = kind(here);
      const last = i === parts.length;
      if (k === 'symlink') {
        throw mountError(`staged path for preserve ${p} is a symlink, and a mount would follow it out of the tree`, here,
          `remove ${p} from preserve, or fix the node image so that ${here.slice(stagedRoot.length)} is a real ${last ? sourceKind === 'dir' ? 'directory' : 'file' : 'directory'}`);
      }
      if (k === 'missing') {
        // In overlay mode the booted lower shows the path through; the delta needs no mountpoint.
        if (mode === 'bind') prepare.push(last && sourceKind === 'file' ? { op: 'touch', path: here } : { op: 'mkdir', path: here });
        continue;
      }
      const need = last ? sourceKind : 'dir';
      if (k !== need) {
        throw mountError(`preserve ${p} is a ${sourceKind} in the booted ${target} but the staged path is a ${k === 'dir' ? 'directory' : k}`,
          here, `remove ${p} from preserve, or make the node image ship a ${need === 'dir' ? 'directory' : 'file'} there`);
      }
    }
    preserved.push({ path: p, source, mountpoint: join(assembled, rel) });
    chosen.push(p);
  }

  prepare.push(
    { op: 'mkdir', path: assembled },
    { op: 'bind', source: workDir, target: workDir },
    { op: 'make-private', target: workDir },
    mode === 'bind'
      ? { op: 'bind', source: stagedUsr, target: assembled }
      : { op: 'overlay', lowerdirs: [stagedUsr, lower], target: assembled,
        ...(input.overlayMounterContext ? { mounter: { context: input.overlayMounterContext, unit: OVERLAY_MOUNT_UNIT } } : {}) },
    // A bind of a shared mount joins its peer group; private, the preserved binds below it do not
    // propagate back into the staging tree or anywhere else before the switch.
    { op: 'make-private', target: assembled },
    // A bind keeps the flags of the mount it comes from, and staging often sits on /run, which
    // is nosuid,nodev (noexec too, from initramfs-tools): the new /usr takes the booted one's.
    { op: 'remount-ro', target: assembled, access: usrAccess },
  );
  for (const p of preserved) {
    prepare.push(
      { op: 'bind', source: p.source, target: p.mountpoint },
      { op: 'make-private', target: p.mountpoint },
      { op: 'remount-ro', target: p.mountpoint },
    );
  }
  return {
    mode, target, stagedUsr, lower, workDir, assembled, preserved, warnings, prepare,
    switch: { op: 'move', source: assembled, target },
    finish: [{ op: 'umount', target: workDir, recursive: false, lazy: false }],
  };
}

function asMountError(err: unknown, path: string, fix: string): PivotError {
  if (err instanceof PivotError && err.kind === 'mount') return err;
  const message = err instanceof Error ? err.message : String(err);
  return mountError(message, path, fix, err);
}

/**
 * Unmounts, falling back to a lazy detach when the mount is still there after a failed attempt
 * (something holds files open under it). umount's exit status does not say EBUSY, and its text is
 * not an interface, so the mount table decides.
 */
async function unmountTree(target: string): Promise<'clean' | 'lazy'> {
  const ours = topMountAt(readMountinfo(), target)?.id;
  try {
    await runOp({ op: 'umount', target, recursive: true, lazy: false });
    return 'clean';
  } catch (err) {
    // Only the very mount we meant to remove may be detached lazily, never what lies under it.
    if (ours === undefined || topMountAt(readMountinfo(), target)?.id !== ours) throw err;
    await runOp({ op: 'umount', target, recursive: true, lazy: true });
    return 'lazy';
  }
}

/** Prepares privately, switches with one move, releases the work area. All or nothing. */
export async function applyUsrMount(plan: UsrMountPlan): Promise<MountResult> {
  for (const w of plan.warnings) log().warn({ phase: 'mount' }, w);
  let workMounted = false;
  try {
    for (const op of plan.prepare) {
      await failpointAsync('mount.prepare');
      await runOp(op);
      if (op.op === 'bind' && op.target === plan.workDir) workMounted = true;
    }
    await failpointAsync('mount.switch');
    await runOp(plan.switch);
  } catch (err) {
    // The target was never touched; drop whatever was assembled so no stray mount stays behind.
    if (workMounted) {
      await unmountTree(plan.workDir).catch((e: unknown) =>
        log().warn({ phase: 'mount', err: e }, `could not release ${plan.workDir}; unmount it by hand`));
    }
    throw asMountError(err, plan.target, 'see the cause above; the target was left as it was');
  }
  const result: MountResult = { plan };
  try {
    await failpointAsync('mount.switched');
    for (const op of plan.finish) await runOp(op);
    workMounted = false;
    if (!isUsrPivoted(plan.target, join(plan.stagedUsr, '..'), plan.mode, plan.lower)) {
      throw mountError('after the move the target does not show the staged usr', plan.target, 'check for another mount stacked on the target');
    }
    const top = topMountAt(readMountinfo(), plan.target);
    if (!top || !top.options.split(',').includes('ro')) {
      throw mountError('after the move the target is not read-only', plan.target, 'check that the kernel honours remount,bind,ro here');
    }
    const wanted = plan.prepare.find((op) => op.op === 'remount-ro' && op.target === plan.assembled);
    const access = wanted?.op === 'remount-ro' ? wanted.access : undefined;
    if (access && JSON.stringify(accessFlags(top.options)) !== JSON.stringify(access)) {
      throw mountError(`after the move the target's flags are ${top.options}, not the booted /usr's nosuid/nodev/noexec`, plan.target,
        'check for a mount stacked on the target, and that the kernel honours remount,bind with suid,dev,exec here');
    }
  } catch (err) {
    const cause = asMountError(err, plan.target, 'see the cause; the old /usr was restored');
    try {
      await undoUsrMount(result);
      if (workMounted) await unmountTree(plan.workDir);
    } catch (undoErr) {
      throw mountError(`${cause.message}; undo also failed: ${(undoErr as Error).message}`, plan.target,
        `unmount ${plan.target} by hand (umount -R -l ${plan.target}) so the old /usr is visible again`, err);
    }
    throw cause;
  }
  try {
    rmdirSync(plan.assembled);
    rmdirSync(plan.workDir);
  } catch {
    // An empty leftover directory is harmless; the next run reuses it.
  }
  log().info({ phase: 'mount', target: plan.target, mode: plan.mode, preserved: plan.preserved.map((p) => p.path) }, `${plan.target} now shows the node image`);
  return result;
}

/** Makes the target show what it showed before applyUsrMount. Only ever removes our mount. */
export async function undoUsrMount(result: MountResult): Promise<'clean' | 'lazy' | 'not-mounted'> {
  const { plan } = result;
  try {
    await failpointAsync('mount.undo');
    if (!isUsrPivoted(plan.target, join(plan.stagedUsr, '..'), plan.mode, plan.lower)) {
      log().warn({ phase: 'mount', target: plan.target }, `${plan.target} does not show the staged usr; nothing to undo`);
      return 'not-mounted';
    }
    const how = await unmountTree(plan.target);
    if (isUsrPivoted(plan.target, join(plan.stagedUsr, '..'), plan.mode, plan.lower)) {
      throw mountError('the staged usr is still mounted after unmounting', plan.target, `unmount it by hand: umount -R -l ${plan.target}`);
    }
    log().info({ phase: 'mount', target: plan.target, how }, `${plan.target} shows the booted content again`);
    return how;
  } catch (err) {
    throw asMountError(err, plan.target, `unmount it by hand: umount -R -l ${plan.target}`);
  }
}

/** For reruns: does the target already show this staged tree? */
export function isUsrPivoted(target: string, stagedRoot: string, mode: UsrMountMode = 'bind', lower: string = target): boolean {
  const stagedUsr = join(stagedRoot, 'usr');
  if (mode === 'overlay') {
    const top = topMountAt(readMountinfo(), normalize(target));
    return top?.fsType === 'overlay' && top.superOptions.split(',').includes(`lowerdir=${stagedUsr}:${normalize(lower)}`);
  }
  try {
    const a = statSync(target);
    const b = statSync(stagedUsr);
    return a.dev === b.dev && a.ino === b.ino;
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ENOTDIR')) return false;
    throw err;
  }
}

/** Does `target` show the staged tree, as a bind (full staging) or as a delta overlay over `bootedUsr`? */
export function isUsrPivotedEitherMode(target: string, stagedRoot: string, bootedUsr: string): boolean {
  return isUsrPivoted(target, stagedRoot) || isUsrPivoted(target, stagedRoot, 'overlay', bootedUsr);
}

/** PID 1's context for a delta's overlay under SELinux (mount-ops.ts OverlayMounter says why). */
function overlayMounterContext(): string | undefined {
  const init = initDomainWhenSelinux();
  if (!init && ownDomainWhenSelinux()) {
    log().warn({ phase: 'mount' }, 'SELinux is on but PID 1\'s context or mount namespace cannot be read, so the agent mounts the overlay itself; '
      + 'confined domains (chkpwd_t) may then be denied the ELFs of the delta (fd use)');
  }
  return init;
}

/**
 * The pivot's mount phase in one call: plan from the disk, switch, and hand back the undo.
 * `facts` go to the state file.
 */
export async function mountStagedUsr(input: UsrMountInput): Promise<{ undo(): Promise<void>; facts: Record<string, unknown> }> {
  const mounter = input.overlayMounterContext ?? (input.mode === 'overlay' ? overlayMounterContext() : undefined);
  const plan = planUsrMount(mounter ? { ...input, overlayMounterContext: mounter } : input, probePathFacts(input), probeUsrAccess(input.target));
  const result = await applyUsrMount(plan);
  return {
    undo: async () => {
      await undoUsrMount(result);
    },
    facts: { target: plan.target, mode: plan.mode, ...(plan.mode === 'overlay' ? { lowerdirs: [plan.stagedUsr, plan.lower], overlayMounter: mounter ?? 'agent' } : {}), preserved: plan.preserved.map((p) => p.path), warnings: plan.warnings },
  };
}
