// The mount step's operations: each planned step as data, the util-linux argv for it, and
// running it in the agent's own SELinux domain (src/selinux-kernel.ts spawnInOwnDomain).
import { mkdirSync, writeFileSync } from 'node:fs';
import { execa } from 'execa';
import { PivotError } from './errors.ts';
import type { MountAccessFlags } from './mountinfo.ts';
import { spawnInOwnDomain } from './selinux-kernel.ts';

export type MountOp =
  | { op: 'mkdir'; path: string }
  | { op: 'touch'; path: string }
  | { op: 'bind'; source: string; target: string }
  | { op: 'make-private'; target: string }
  | { op: 'overlay'; lowerdirs: string[]; target: string }
  | { op: 'remount-ro'; target: string; access?: MountAccessFlags }
  | { op: 'move'; source: string; target: string }
  | { op: 'umount'; target: string; recursive: boolean; lazy: boolean };

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
    case 'overlay':
      // Two or more lowerdirs and no upperdir: the overlay is read-only and needs no workdir.
      return ['mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${op.lowerdirs.join(':')}`, op.target]];
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
  if (r.exitCode !== 0) {
    const why = (r.all ?? '').trim().split('\n')[0] || `exit ${String(r.exitCode)}`;
    const path = 'target' in op ? op.target : '';
    throw new PivotError('mount', `${cmd} ${args.join(' ')} failed: ${why}`, {
      path, fix: 'check the kernel log (dmesg) and that the agent runs as root in the host mount namespace (no MountFlags=, PrivateMounts=)',
    });
  }
}

