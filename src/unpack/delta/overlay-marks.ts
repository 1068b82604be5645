// The two marks overlayfs reads in a lower layer: a whiteout (a character device 0/0) hides the
// name below it, and trusted.overlay.opaque=y on a directory hides everything below it. Both
// need root (CAP_MKNOD, CAP_SYS_ADMIN for trusted.*), as the agent always is.
import { spawnSync } from 'node:child_process';
import { PivotError } from '../../errors.ts';
import { xattrs } from '../../xattr.ts';

export const OPAQUE_XATTR = 'trusted.overlay.opaque';
/** Paths per mknod batch: one shell per batch, well inside ARG_MAX even for 4 KiB paths. */
const BATCH = 256;

export function markOpaque(dir: string): void {
  try {
    xattrs().setAttributeSync(dir, OPAQUE_XATTR, 'y');
  } catch (err) {
    throw new PivotError('unpack', `cannot mark ${JSON.stringify(dir)} opaque for overlayfs (${OPAQUE_XATTR}): ${(err as Error).message}`, {
      path: dir,
      fix: 'delta staging needs root and a staging filesystem with trusted.* xattrs (tmpfs, ext4, xfs); or set staging to "full"',
      cause: err,
    });
  }
}

/** Node has no mknod(2); coreutils mknod makes each one, a shell loop saves a spawn per path. */
export function makeWhiteouts(paths: readonly string[]): void {
  for (let i = 0; i < paths.length; i += BATCH) {
    const batch = paths.slice(i, i + BATCH);
    const r = spawnSync('sh', ['-c', 'for p do mknod -m 000 -- "$p" c 0 0 || exit 1; done', 'sh', ...batch], { encoding: 'utf8', stdio: ['ignore', 'ignore', 'pipe'] });
    if (r.status !== 0) {
      throw new PivotError('unpack', `cannot create overlay whiteouts in the delta: ${(r.stderr || r.error?.message || `exit ${String(r.status)}`).trim()}`, {
        path: batch[0],
        fix: 'delta staging needs root (CAP_MKNOD) on the staging filesystem; or set staging to "full"',
      });
    }
  }
}
