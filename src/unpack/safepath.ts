// Rooted path resolution: every name in a layer is taken relative to the destination root, the
// way umoci (filepath-securejoin) and containerd (fs.RootPath) do. `..` at the root stays at the
// root, an absolute name or symlink target restarts at the root, and a symlink is only ever
// followed *inside* the root, never out of it. The walk is component by component against the
// tree as it is right now, so a symlink planted by an earlier entry cannot redirect a later one.
//
// The algorithm is pure over a small probe interface, so it is tested without a disk; fsProbe()
// binds it to a real directory.
import { lstatSync, mkdirSync, readlinkSync } from 'node:fs';
import { PivotError } from '../errors.ts';

/** Linux's own limit (MAXSYMLINKS); a longer chain is a loop or an attack. */
export const MAX_SYMLINKS = 40;

export type NodeKind = 'dir' | 'symlink' | 'other' | 'missing';

/** What the resolver may ask about the tree. `rel` is '/'-joined and relative to the root. */
export interface PathProbe {
  kind(rel: string): NodeKind;
  readlink(rel: string): string;
  /** Creates a missing directory (only called when resolving with create=true). */
  mkdir(rel: string): void;
}

/**
 * Lexically cleans a tar name into components below the root: empty and `.` components go,
 * `..` pops (and is dropped at the root), a leading `/` means nothing. Like Go's
 * filepath.Clean("/" + name), which is what umoci and containerd apply first.
 */
export function cleanComponents(name: string, what = 'entry'): string[] {
  if (name.includes('\0')) {
    throw new PivotError('path-safety', `${what} name contains a NUL byte`, {
      path: name.replace(/\0/g, '\\0'),
      fix: 'the layer is malformed or hostile: rebuild the image',
    });
  }
  const out: string[] = [];
  for (const c of name.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') out.pop();
    else out.push(c);
  }
  return out;
}

export const joinRel = (parts: readonly string[]): string => parts.join('/');

/**
 * Resolves `components` as a directory inside the root, following symlinks but scoped to the
 * root. Returns the resolved components (only real directory names, never `..` or a symlink),
 * or undefined when a component is missing and `create` is false. Missing directories are made
 * when `create` is true; each made one is reported through `onCreate`.
 */
export function resolveDirInRoot(
  components: readonly string[],
  probe: PathProbe,
  opts: { create: boolean; entry: string; onCreate?: (rel: string) => void },
): string[] | undefined {
  const resolved: string[] = [];
  const queue = [...components];
  let links = 0;
  while (queue.length > 0) {
    const c = queue.shift() as string;
    if (c === '' || c === '.') continue;
    if (c === '..') {
      resolved.pop();
      continue;
    }
    const rel = joinRel([...resolved, c]);
    const kind = probe.kind(rel);
    if (kind === 'dir') {
      resolved.push(c);
    } else if (kind === 'symlink') {
      if (++links > MAX_SYMLINKS) {
        throw new PivotError('path-safety', `too many levels of symlinks resolving ${JSON.stringify(opts.entry)}`, {
          path: opts.entry,
          fix: 'the layer has a symlink loop: rebuild the image',
        });
      }
      const target = probe.readlink(rel);
      // An absolute target restarts at the root: that is the scoping, not an escape.
      if (target.startsWith('/')) resolved.length = 0;
      queue.unshift(...target.split('/'));
    } else if (kind === 'missing') {
      if (!opts.create) return undefined;
      probe.mkdir(rel);
      opts.onCreate?.(rel);
      resolved.push(c);
    } else {
      throw new PivotError('path-safety', `${JSON.stringify(opts.entry)} needs ${JSON.stringify(rel)} to be a directory, but it is not`, {
        path: opts.entry,
        fix: 'the layer writes through a non-directory: rebuild the image',
      });
    }
  }
  return resolved;
}

/** Binds the resolver to a directory on disk. Implicit directories are root-owned 0755. */
export function fsProbe(root: string): PathProbe {
  return {
    kind(rel) {
      const st = lstatSync(hostPath(root, rel), { throwIfNoEntry: false });
      if (!st) return 'missing';
      if (st.isDirectory()) return 'dir';
      if (st.isSymbolicLink()) return 'symlink';
      return 'other';
    },
    readlink: (rel) => readlinkSync(hostPath(root, rel)),
    mkdir: (rel) => mkdirSync(hostPath(root, rel), { mode: 0o755 }),
  };
}

/** The on-disk path of a resolved relative path. Components never hold `/`, `.` or `..`. */
export function hostPath(root: string, rel: string): string {
  return rel === '' ? root : `${root}/${rel}`;
}
