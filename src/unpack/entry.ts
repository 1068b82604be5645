// Writes one entry into the destination tree. Everything that touches the tree goes through the
// LayerTarget interface, so a later delta mode can implement it against a reference tree (write
// only what differs, turn whiteouts into overlay whiteouts) without touching the tar handling.
//
// Replacement follows the container runtimes: a directory over a directory merges (new metadata,
// old contents); anything else first removes what is there (a directory recursively), then
// creates. Files are always created fresh with O_EXCL|O_NOFOLLOW, so neither a symlink nor a
// hardlink to a lower layer's inode is ever written through.
import {
  closeSync, constants, fchmodSync, fchownSync, futimesSync, linkSync, lchownSync, lstatSync, lutimesSync, mkdirSync, openSync, rmSync,
  symlinkSync, chmodSync, readdirSync, writeSync,
} from 'node:fs';
import { execa } from 'execa';
import { PivotError, isErrno } from '../errors.ts';
import { log } from '../log.ts';
import { xattrs } from '../xattr.ts';
import { cleanComponents, fsProbe, hostPath, joinRel, resolveDirInRoot, type PathProbe } from './safepath.ts';
import type { TreeReader } from './factory-var.ts';
import type { TarEntry } from './tar.ts';

export type Outcome = 'file' | 'dir' | 'symlink' | 'hardlink' | 'fifo' | 'device' | 'device-skipped';

/** The tree side of an unpack. One instance per destination, across all layers. */
export interface LayerTarget {
  beginLayer(index: number): void;
  /**
   * Writes one non-whiteout entry; `body` must be consumed or left to the caller to drain.
   * `comps` is cleanComponents(entry.name), already computed by the caller.
   */
  writeEntry(entry: TarEntry, comps: readonly string[], body: AsyncIterable<Buffer>): Promise<Outcome>;
  /** `.wh.NAME` in `dir` (components of the entry's directory, not yet resolved). */
  whiteout(dir: readonly string[], name: string, entryName: string): void;
  /** `.wh..wh..opq` in `dir`. */
  opaque(dir: readonly string[], entryName: string): void;
  /** Directory mtimes last, once nothing will be written into them any more. */
  finish(): void;
  /**
   * After finish(): the tree as the node will see it, for bootc's cleanup (absent: the
   * destination on disk is that tree).
   */
  finishedReader?(): TreeReader;
  /** After finish(): removes an empty regular file of that tree; false when there is none. */
  removeEmptyFile?(rel: string): boolean;
}

export interface DirectTargetOptions {
  allowDevices: boolean;
  isRoot: boolean;
  /**
   * Wraps the on-disk probe the resolver asks: a delta target answers for entries it left out
   * of the tree (a skipped symlink must still be followed as the image would).
   */
  wrapProbe?: (onDisk: PathProbe) => PathProbe;
}

const XATTR_WE_DO_NOT_CLEAR = new Set(['security.selinux']);
const CREATE_FILE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

/**
 * Remembers which relative paths are real directories, so resolving an entry's parent costs no
 * lstat per component. Only this target changes the tree under construction, and every removal
 * goes through clear(), which forgets the removed path and everything below it.
 */
function cachedProbe(inner: PathProbe, known: Set<string>): PathProbe {
  return {
    kind(rel) {
      if (known.has(rel)) return 'dir';
      const k = inner.kind(rel);
      if (k === 'dir') known.add(rel);
      return k;
    },
    readlink: (rel) => inner.readlink(rel),
    mkdir(rel) {
      inner.mkdir(rel);
      known.add(rel);
    },
  };
}

/** Runs `create`; when the name is taken, clears it the usual way and creates again. */
function createOrReplace<T>(create: () => T, replace: () => void): T {
  try {
    return create();
  } catch (err) {
    if (!isErrno(err, 'EEXIST')) throw err;
  }
  replace();
  return create();
}

export class DirectTarget implements LayerTarget {
  readonly root: string;
  private readonly opts: DirectTargetOptions;
  private readonly probe: PathProbe;
  /** Paths created or written by the current layer: opaque and plain whiteouts spare them. */
  private layerPaths = new Set<string>();
  private readonly dirTimes = new Map<string, number>();
  /** Relative paths known to be real directories right now (see cachedProbe). */
  private readonly knownDirs = new Set<string>();

  constructor(root: string, opts: DirectTargetOptions) {
    this.root = root;
    this.opts = opts;
    const onDisk = fsProbe(root);
    this.probe = cachedProbe(opts.wrapProbe ? opts.wrapProbe(onDisk) : onDisk, this.knownDirs);
  }

  /** The resolved relative path of an entry, its parents created as for a write. */
  placeEntry(entryName: string, comps: readonly string[]): string {
    return this.place(entryName, comps).rel;
  }

  /** Removes whatever is at rel (a directory recursively), as a replacement would. */
  removePath(rel: string): void {
    this.clear(rel, false);
  }

  beginLayer(): void {
    this.layerPaths = new Set();
  }

  /** Resolves the entry's parent (creating it) and returns [parentRel, name]. */
  private place(entryName: string, entryComps: readonly string[]): { rel: string; name: string } {
    const comps = entryComps.slice(0, -1);
    const name = entryComps.at(-1);
    if (name === undefined) return { rel: '', name: '' };
    // A known directory path is made of real directory names only, so it resolves to itself.
    const lexical = joinRel(comps);
    if (lexical === '' || this.knownDirs.has(lexical)) return { rel: lexical === '' ? name : `${lexical}/${name}`, name };
    const parent = resolveDirInRoot(comps, this.probe, {
      create: true,
      entry: entryName,
      onCreate: (r) => this.layerPaths.add(r),
    }) as string[];
    return { rel: joinRel([...parent, name]), name };
  }

  /** Removes whatever is at rel, unless `keepDir` and it is a directory. Never follows links. */
  private clear(rel: string, keepDir: boolean): boolean {
    const path = hostPath(this.root, rel);
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (!st) return false;
    if (st.isDirectory() && keepDir) return true;
    rmSync(path, { recursive: true, force: true });
    // Only directories have dirTimes/knownDirs keys at or below them: every removal goes
    // through here, so a non-directory at rel means no key names rel or anything under it.
    if (st.isDirectory()) {
      this.forgetTimes(rel);
      this.forgetDirs(rel);
    }
    return false;
  }

  private forgetTimes(rel: string): void {
    const prefix = `${rel}/`;
    for (const k of this.dirTimes.keys()) if (k === rel || k.startsWith(prefix)) this.dirTimes.delete(k);
  }

  private forgetDirs(rel: string): void {
    const prefix = `${rel}/`;
    for (const k of this.knownDirs) if (k === rel || k.startsWith(prefix)) this.knownDirs.delete(k);
  }

  async writeEntry(entry: TarEntry, comps: readonly string[], body: AsyncIterable<Buffer>): Promise<Outcome> {
    const { rel } = this.place(entry.name, comps);
    const path = hostPath(this.root, rel);
    if (rel === '' && entry.type !== 'dir') {
      throw new PivotError('path-safety', `entry ${JSON.stringify(entry.name)} would replace the destination root with a ${entry.type}`, {
        path: entry.name,
        fix: 'the layer is malformed or hostile: rebuild the image',
      });
    }
    this.layerPaths.add(rel);
    switch (entry.type) {
      case 'dir': {
        // Creating first and clearing only on EEXIST saves an lstat per entry in a fresh tree.
        // A directory made just now has no xattrs to replace, so only a kept one is listed.
        let kept = false;
        try {
          mkdirSync(path, { mode: 0o700 });
        } catch (err) {
          if (!isErrno(err, 'EEXIST')) throw err;
          kept = this.clear(rel, true);
          if (!kept) mkdirSync(path, { mode: 0o700 });
        }
        this.metadata(path, entry, true, kept);
        this.dirTimes.set(rel, entry.mtime);
        return 'dir';
      }
      case 'file': {
        // Synchronous calls on purpose: each is a few microseconds on the staging filesystem,
        // while a promise round trip through the libuv pool per call dominated the unpack
        // (six of them per file). The inflater keeps running on the pool meanwhile.
        const fd = createOrReplace(() => openSync(path, CREATE_FILE, 0o600), () => this.clear(rel, false));
        try {
          let written = 0;
          for await (const chunk of body) {
            let off = 0;
            while (off < chunk.length) off += writeSync(fd, chunk, off);
            written += chunk.length;
          }
          if (written !== entry.size) {
            throw new PivotError('unpack', `entry ${JSON.stringify(entry.name)} ended after ${written} of ${entry.size} bytes`, {
              fix: 'pull again; if it repeats, the layer is damaged',
            });
          }
          if (this.opts.isRoot) fchownSync(fd, entry.uid, entry.gid);
          fchmodSync(fd, entry.mode);
          this.setXattrs(path, entry, false);
          futimesSync(fd, entry.mtime, entry.mtime);
        } finally {
          closeSync(fd);
        }
        return 'file';
      }
      case 'symlink': {
        createOrReplace(() => symlinkSync(entry.linkname, path), () => this.clear(rel, false));
        this.metadata(path, entry, false);
        return 'symlink';
      }
      case 'hardlink':
        return this.hardlink(entry, rel, path);
      case 'fifo':
      case 'char':
      case 'block':
        return this.special(entry, rel, path);
    }
  }

  private async hardlink(entry: TarEntry, rel: string, path: string): Promise<Outcome> {
    if (!entry.linkname) {
      throw new PivotError('unpack', `hardlink ${JSON.stringify(entry.name)} has no target`, { fix: 'rebuild the image' });
    }
    // The target's directories are resolved inside the root; its last component is never
    // followed, so a hardlink to a symlink links the symlink itself (as link(2) does).
    const comps = cleanComponents(entry.linkname, 'hardlink target');
    const last = comps.pop();
    const dir = last === undefined ? undefined : resolveDirInRoot(comps, this.probe, { create: false, entry: entry.linkname });
    const targetRel = dir && last !== undefined ? joinRel([...dir, last]) : undefined;
    if (targetRel !== undefined && targetRel !== rel) {
      // The common case costs one link(2); any refusal (missing target, a directory, a taken
      // name) goes through the checks below, which name the problem or clear the name.
      try {
        linkSync(hostPath(this.root, targetRel), path);
        return 'hardlink';
      } catch { /* checked below */ }
    }
    const st = targetRel === undefined ? undefined : lstatSync(hostPath(this.root, targetRel), { throwIfNoEntry: false });
    if (!st || targetRel === undefined) {
      throw new PivotError('unpack', `hardlink ${JSON.stringify(entry.name)} points to ${JSON.stringify(entry.linkname)}, which does not exist in the image`, {
        path: entry.name,
        fix: 'the layer is malformed: rebuild the image',
      });
    }
    if (st.isDirectory()) {
      throw new PivotError('path-safety', `hardlink ${JSON.stringify(entry.name)} points to directory ${JSON.stringify(entry.linkname)}`, {
        path: entry.name,
        fix: 'the layer is malformed or hostile: rebuild the image',
      });
    }
    if (targetRel === rel) return 'hardlink';
    this.clear(rel, false);
    linkSync(hostPath(this.root, targetRel), path);
    return 'hardlink';
  }

  private async special(entry: TarEntry, rel: string, path: string): Promise<Outcome> {
    if (entry.type !== 'fifo' && !(this.opts.allowDevices && this.opts.isRoot)) {
      this.layerPaths.delete(rel);
      return 'device-skipped';
    }
    this.clear(rel, false);
    const args = entry.type === 'fifo'
      ? [path, 'p']
      : [path, entry.type === 'char' ? 'c' : 'b', String(entry.devmajor), String(entry.devminor)];
    const r = await execa('mknod', ['-m', '0600', '--', ...args], { reject: false, stdin: 'ignore', all: true });
    if (r.exitCode !== 0) {
      throw new PivotError('unpack', `mknod failed for ${JSON.stringify(entry.name)}: ${String(r.all ?? '').trim()}`, {
        path: entry.name,
        fix: entry.type === 'fifo' ? 'check the destination filesystem' : 'set allowDevices to false to skip device nodes',
      });
    }
    this.metadata(path, entry, false);
    return entry.type === 'fifo' ? 'fifo' : 'device';
  }

  /**
   * lchown, chmod (not on symlinks), xattrs, times (directories: deferred to finish()).
   * `replaceXattrs`: the path is an existing directory kept from a lower layer.
   */
  private metadata(path: string, entry: TarEntry, isDir: boolean, replaceXattrs = false): void {
    // Unprivileged runs (development, CI) keep their own uid; the agent itself always runs as root.
    if (this.opts.isRoot) lchownSync(path, entry.uid, entry.gid);
    if (entry.type !== 'symlink') chmodSync(path, entry.mode);
    this.setXattrs(path, entry, replaceXattrs);
    if (!isDir) lutimesSync(path, entry.mtime, entry.mtime);
  }

  private setXattrs(path: string, entry: TarEntry, replaceExisting: boolean): void {
    const x = xattrs();
    if (replaceExisting) {
      // A directory re-declared by a later layer carries its complete set.
      for (const name of x.listAttributesSync(path)) {
        if (!entry.xattrs.has(name) && !XATTR_WE_DO_NOT_CLEAR.has(name)) x.removeAttributeSync(path, name);
      }
    }
    for (const [name, value] of entry.xattrs) {
      try {
        x.setAttributeSync(path, name, value);
      } catch (err) {
        // The kernel refuses user.* on symlinks; umoci skips those too.
        if (entry.type === 'symlink' && name.startsWith('user.')) {
          log().warn({ entry: entry.name, xattr: name }, 'skipping user.* xattr on a symlink (not supported by Linux)');
          continue;
        }
        throw new PivotError('unpack', `cannot set xattr ${name} on ${JSON.stringify(entry.name)}: ${(err as Error).message}`, {
          path: entry.name,
          fix: 'unpack onto a filesystem with xattr support (ext4, xfs, tmpfs on Linux 6.6+)',
          cause: err,
        });
      }
    }
  }

  whiteout(dir: readonly string[], name: string, entryName: string): void {
    if (name === '' || name === '.' || name === '..') {
      throw new PivotError('path-safety', `whiteout ${JSON.stringify(entryName)} names no file`, {
        path: entryName,
        fix: 'the layer is malformed or hostile: rebuild the image',
      });
    }
    const parent = resolveDirInRoot(dir, this.probe, { create: false, entry: entryName });
    if (!parent) return;
    const rel = joinRel([...parent, name]);
    // A whiteout hides lower layers only; the same layer's own entry stays.
    if (this.layerPaths.has(rel)) return;
    this.clear(rel, false);
  }

  opaque(dir: readonly string[], entryName: string): void {
    const parent = resolveDirInRoot(dir, this.probe, { create: true, entry: entryName, onCreate: (r) => this.layerPaths.add(r) }) as string[];
    this.emptyLower(joinRel(parent));
  }

  /** Removes everything under rel that the current layer did not write. */
  private emptyLower(rel: string): void {
    for (const child of readdirSync(hostPath(this.root, rel), { withFileTypes: true })) {
      const childRel = rel === '' ? child.name : `${rel}/${child.name}`;
      if (!this.layerPaths.has(childRel)) this.clear(childRel, false);
      else if (child.isDirectory()) this.emptyLower(childRel);
    }
  }

  finish(): void {
    const depth = (rel: string): number => (rel === '' ? 0 : rel.split('/').length);
    const deepestFirst = [...this.dirTimes.entries()]
      .map(([rel, mtime]) => ({ rel, mtime, depth: depth(rel) }))
      .sort((a, b) => b.depth - a.depth);
    for (const { rel, mtime } of deepestFirst) {
      const path = hostPath(this.root, rel);
      try {
        if (lstatSync(path).isDirectory()) lutimesSync(path, mtime, mtime);
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err;
      }
    }
  }
}
