// lstat-only scan of an /etc-like tree. Symlinks are recorded, never followed. Content hashes are
// computed later and only for the files a comparison needs (see hashMissing and plan.ts).
//
// Synchronous on purpose: an /etc scan is thousands of tiny lstat calls, and a thread-pool round
// trip per call costs more than the call. Nothing else runs while the merge does.
import { lstatSync, readdirSync, readlinkSync, openSync, readSync, closeSync, type Stats } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { PivotError, isErrno } from '../errors.ts';
import { failpoint } from '../failpoints.ts';
import type { EtcEntryType, EtcEntry, EtcTree } from './types.ts';

export function entryType(st: Stats): EtcEntryType {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isSocket()) return 'socket';
  if (st.isCharacterDevice()) return 'char-device';
  return 'block-device';
}

export function entryFromStats(st: Stats, absPath: string): EtcEntry {
  const type = entryType(st);
  const entry: EtcEntry = {
    type,
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    size: type === 'file' ? st.size : 0,
    ino: st.ino,
    mtimeMs: st.mtimeMs,
  };
  if (type === 'symlink') entry.target = readlinkSync(absPath, 'utf8');
  return entry;
}

export interface ScanOptions {
  /** Names skipped at the top level only (the journal when it has to live inside current). */
  excludeTop?: readonly string[];
}

/** Scans `root` (which must be a directory) into relative path -> entry. */
export function scanTree(root: string, opts: ScanOptions = {}): EtcTree {
  failpoint('etc.scan');
  let rootStat: Stats;
  try {
    rootStat = lstatSync(root);
  } catch (err) {
    throw new PivotError('etc-merge', `cannot read ${isErrno(err, 'ENOENT') ? 'missing ' : ''}directory`, {
      path: root,
      fix: 'pass an existing directory',
      cause: err,
    });
  }
  if (!rootStat.isDirectory()) {
    throw new PivotError('etc-merge', 'not a directory (symlinks are not followed)', {
      path: root,
      fix: 'pass the real directory, not a file or a symlink to one',
    });
  }
  const entries = new Map<string, EtcEntry>();
  entries.set('', entryFromStats(rootStat, root));
  const exclude = new Set(opts.excludeTop ?? []);
  walk(root, '', entries, exclude);
  return { root, entries };
}

/** Adds everything below `rel` (a directory) to `entries`. */
export function walk(root: string, rel: string, entries: Map<string, EtcEntry>, excludeTop = new Set<string>()): void {
  const stack = [rel];
  while (stack.length > 0) {
    const dirRel = stack.pop() as string;
    const dirAbs = dirRel === '' ? root : join(root, dirRel);
    let names: string[];
    try {
      names = readdirSync(dirAbs, { encoding: 'utf8' });
    } catch (err) {
      throw new PivotError('etc-merge', `cannot list directory: ${(err as Error).message}`, {
        path: dirAbs,
        fix: 'check the permissions of the directory and rerun as root',
        cause: err,
      });
    }
    for (const name of names) {
      if (dirRel === '' && excludeTop.has(name)) continue;
      const childRel = dirRel === '' ? name : `${dirRel}/${name}`;
      const abs = join(dirAbs, name);
      const entry = entryFromStats(lstatSync(abs), abs);
      entries.set(childRel, entry);
      if (entry.type === 'dir') stack.push(childRel);
    }
  }
}

/** Below this size a file is read in one call; above it, in chunks, so memory stays bounded. */
const CHUNK = 1 << 20;
const chunkBuf = Buffer.allocUnsafe(CHUNK);

export function sha256File(absPath: string): string {
  const hash = createHash('sha256');
  const fd = openSync(absPath, 'r');
  try {
    for (;;) {
      const n = readSync(fd, chunkBuf, 0, CHUNK, null);
      if (n === 0) break;
      hash.update(chunkBuf.subarray(0, n));
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest('hex');
}

/** Fills in sha256 for the given relative paths of `tree` (regular files only). */
export function hashPaths(tree: EtcTree, paths: Iterable<string>): number {
  let n = 0;
  for (const rel of paths) {
    const e = tree.entries.get(rel);
    if (!e || e.type !== 'file' || e.sha256 !== undefined) continue;
    e.sha256 = sha256File(join(tree.root, rel));
    n++;
  }
  return n;
}
