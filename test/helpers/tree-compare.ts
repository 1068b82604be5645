// Compares two directory trees the way the unpack must be judged against umoci: type, mode,
// uid, gid, size, content sha256, symlink target, hardlink grouping, xattrs and file mtimes
// (directory mtimes are left out: see docs/unpack.md). Returns a list of differences, empty when
// the trees match. Never follows symlinks.
import { createHash } from 'node:crypto';
import { lstatSync, readFileSync, readdirSync, readlinkSync, type BigIntStats } from 'node:fs';
import { readXattrs } from '../../src/xattr.ts';

export interface NodeFacts {
  type: string;
  mode: string;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  target?: string;
  /** Other paths sharing this inode, sorted (regular files only). */
  links?: string;
  xattrs: string;
  mtimeUs?: string;
  rdev?: string;
}

function typeOf(st: BigIntStats): string {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isFIFO()) return 'fifo';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  return 'other';
}

export interface ScanOptions {
  /** xattr names to leave out (e.g. security.selinux set by the host). */
  ignoreXattrs?: string[];
}

/** rel path -> facts, for every node under root (root itself is ''). */
export function scanTree(root: string, opts: ScanOptions = {}): Map<string, NodeFacts> {
  const out = new Map<string, NodeFacts>();
  const inodes = new Map<string, string[]>();
  const ignore = new Set(opts.ignoreXattrs ?? []);
  const walk = (rel: string): void => {
    const path = rel === '' ? root : `${root}/${rel}`;
    const st = lstatSync(path, { bigint: true });
    const type = typeOf(st);
    const xs = [...readXattrs(path)].filter(([k]) => !ignore.has(k)).sort(([a], [b]) => (a < b ? -1 : 1));
    const facts: NodeFacts = {
      type,
      mode: (Number(st.mode) & 0o7777).toString(8),
      uid: Number(st.uid),
      gid: Number(st.gid),
      xattrs: xs.map(([k, v]) => `${k}=${v.toString('hex')}`).join(','),
    };
    if (type === 'file') {
      facts.size = Number(st.size);
      facts.sha256 = createHash('sha256').update(readFileSync(path)).digest('hex');
      facts.mtimeUs = (st.mtimeNs / 1000n).toString();
      const key = `${st.dev}:${st.ino}`;
      inodes.set(key, [...(inodes.get(key) ?? []), rel]);
    }
    if (type === 'symlink') {
      facts.target = readlinkSync(path);
      facts.mtimeUs = (st.mtimeNs / 1000n).toString();
    }
    if (type === 'char' || type === 'block') facts.rdev = st.rdev.toString();
    out.set(rel, facts);
    if (type === 'dir') {
      for (const name of readdirSync(path).sort()) walk(rel === '' ? name : `${rel}/${name}`);
    }
  };
  walk('');
  for (const group of inodes.values()) {
    if (group.length < 2) continue;
    for (const rel of group) {
      const f = out.get(rel);
      if (f) f.links = group.filter((g) => g !== rel).sort().join('|');
    }
  }
  return out;
}

/** Differences between two trees as human-readable lines, e.g. `usr/bin/x: mode 755 != 4755`. */
export function compareTrees(a: string, b: string, opts: ScanOptions = {}): string[] {
  const ta = scanTree(a, opts);
  const tb = scanTree(b, opts);
  const diffs: string[] = [];
  for (const [rel, fa] of ta) {
    const fb = tb.get(rel);
    const label = JSON.stringify(rel || '.');
    if (!fb) {
      diffs.push(`${label}: only in ${a}`);
      continue;
    }
    for (const key of Object.keys({ ...fa, ...fb }) as Array<keyof NodeFacts>) {
      if (fa[key] !== fb[key]) diffs.push(`${label}: ${key} ${JSON.stringify(fa[key])} != ${JSON.stringify(fb[key])}`);
    }
  }
  for (const rel of tb.keys()) if (!ta.has(rel)) diffs.push(`${JSON.stringify(rel || '.')}: only in ${b}`);
  return diffs;
}
