// The mount step's operations: each planned step as data, the util-linux argv for it, and
// running it in the agent's own SELinux domain (src/selinux-kernel.ts spawnInOwnDomain), or for
// a delta's overlay, in PID 1's.
import { mkdirSync, writeFileSync } from 'node:fs';
import { execa } from 'execa';
import { PivotError } from './errors.ts';
import { readMountinfo, topMountAt, type MountAccessFlags } from './mountinfo.ts';
import { spawnInOwnDomain } from './selinux-kernel.ts';

export type MountOp =
  | { op: 'mkdir'; path: string }
  | { op: 'touch'; path: string }
  | { op: 'bind'; source: string; target: string }
  | { op: 'make-private'; target: string }
  | { op: 'overlay'; lowerdirs: string[]; target: string; mounter?: OverlayMounter }
  | { op: 'remount-ro'; target: string; access?: MountAccessFlags }
  | { op: 'move'; source: string; target: string }
  | { op: 'umount'; target: string; recursive: boolean; lazy: boolean };

/**
 * Who mounts an overlay matters under SELinux: overlayfs opens the layers' real files with the
 * mounter's credentials, and a process that maps one (ld.so's RELRO mprotect on an ELF of the
 * delta) is checked for `fd use` on the mounter's domain. Every domain may use PID 1's (init_t)
 * fds; confined ones such as chkpwd_t may not use the agent's (initrc_t). So the overlay is
 * mounted by a transient unit of PID 1, whose SELinuxContext= keeps PID 1's own domain.
 */
export interface OverlayMounter {
  /** PID 1's context, e.g. system_u:system_r:init_t:s0. */
  context: string;
  /** The transient unit's name, for journalctl -u. */
  unit: string;
}

export const OVERLAY_MOUNT_UNIT = 'node-image-pivot-overlay.service';

/** PURE: util-linux argv for one mount operation (undefined for the filesystem-only ones). */
export function mountArgv(op: MountOp): [string, string[]] | undefined {
  switch (op.op) {
    case 'mkdir':
    case 'touch':
      return undefined;
    case 'bind':
      return ['mount', ['--bind', op.source, op.target]];
    case 'make-private':
      return ['mount', ['--make-private', op.target]];
    case 'overlay': {
      // Two or more lowerdirs and no upperdir: the overlay is read-only and needs no workdir.
      const mount = ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${op.lowerdirs.join(':')}`, op.target];
      if (!op.mounter) return ['mount', mount];
      // No --pipe: dbus-daemon may not pass the agent's fds to PID 1 under the policy. Without
      // default dependencies the unit starts at once, even before basic.target.
      return ['systemd-run', ['--wait', '--collect', '--service-type=exec', `--unit=${op.mounter.unit}`,
        '--property=DefaultDependencies=no', `--property=SELinuxContext=${op.mounter.context}`, '--', 'mount', ...mount]];
    }
    case 'remount-ro': {
      const a = op.access;
      const access = a ? `,${a.nosuid ? 'nosuid' : 'suid'},${a.nodev ? 'nodev' : 'dev'},${a.noexec ? 'noexec' : 'exec'}` : '';
      return ['mount', ['-o', `remount,bind,ro${access}`, op.target]];
    }
    case 'move':
      return ['mount', ['--move', op.source, op.target]];
    case 'umount':
      return ['umount', [...(op.recursive ? ['--recursive'] : []), ...(op.lazy ? ['--lazy'] : []), op.target]];
  }
}

export async function runOp(op: MountOp): Promise<void> {
  if (op.op === 'mkdir') {
    mkdirSync(op.path, { recursive: true, mode: 0o755 });
    return;
  }
  if (op.op === 'touch') {
    writeFileSync(op.path, '', { flag: 'a', mode: 0o644 });
    return;
  }
  const [cmd, args] = mountArgv(op)!;
  const r = await spawnInOwnDomain(() => execa(cmd, args, { reject: false, stdin: 'ignore', all: true }));
  const path = 'target' in op ? op.target : '';
  if (r.exitCode !== 0) {
    if (op.op === 'overlay' && op.mounter) {
      // systemd-run says how the unit ended; mount's own words are in the unit's journal.
      const why = (r.all ?? '').trim().split('\n').filter((l) => !l.startsWith('Running as unit')).join('; ') || `exit ${String(r.exitCode)}`;
      throw new PivotError('mount', `the overlay mount run by PID 1 (${op.mounter.context}, unit ${op.mounter.unit}) failed: ${why}`, {
        path, fix: `journalctl -u ${op.mounter.unit} shows mount's message; check the kernel log (dmesg) for overlayfs and SELinux (avc) lines`,
      });
    }
    const why = (r.all ?? '').trim().split('\n')[0] || `exit ${String(r.exitCode)}`;
    throw new PivotError('mount', `${cmd} ${args.join(' ')} failed: ${why}`, {
      path, fix: 'check the kernel log (dmesg) and that the agent runs as root in the host mount namespace (no MountFlags=, PrivateMounts=)',
    });
  }
  if (op.op === 'overlay' && op.mounter && topMountAt(readMountinfo(), op.target)?.fsType !== 'overlay') {
    // PID 1 mounted in its own namespace; the agent's does not show it, so nothing can be moved.
    throw new PivotError('mount', `the overlay that PID 1 mounted does not show at ${op.target} in the agent's mount namespace`, {
      path, fix: 'run the agent in the host mount namespace (no MountFlags=, PrivateMounts= or unshare), and unmount the stray overlay there by hand',
    });
  }
}

