// Test helpers for the /etc merge: tree specs that become in-memory scans or real directories,
// full-fidelity snapshots of a directory, an independent model of ostree's merge, and a seeded
// generator of three-way trees.
import { createHash } from 'node:crypto';
import {
  chmodSync, lchownSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync,
  rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readXattrs, xattrs } from '../../src/xattr.ts';
import type { EtcEntry, EtcTree } from '../../src/etc/types.ts';
import { rng } from '../helpers/rng.ts';

// Keep test output readable: the merge logs one info line per apply.
process.env.NODE_IMAGE_PIVOT_LOG_LEVEL ??= 'warn';

export type Node =
  | { t: 'f'; c: string; m: number; u: number; g: number; x?: Record<string, string> }
  | { t: 'd'; m: number; u: number; g: number }
  | { t: 'l'; to: string; u: number; g: number }
  | { t: 'p' };
/** Relative path -> node. Parents not listed are directories 0755 root:root. */
export type Spec = Record<string, Node>;

export const f = (c: string, m = 0o644, u = 0, g = 0, x?: Record<string, string>): Node => ({ t: 'f', c, m, u, g, ...(x ? { x } : {}) });
export const d = (m = 0o755, u = 0, g = 0): Node => ({ t: 'd', m, u, g });
export const l = (to: string, u = 0, g = 0): Node => ({ t: 'l', to, u, g });
export const fifo = (): Node => ({ t: 'p' });

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

/** Adds implicit parents; returns paths sorted parents-first. */
export function normalize(spec: Spec): Spec {
  const out: Spec = { ...spec };
  for (const rel of Object.keys(spec)) {
    for (let p = parentOf(rel); p !== ''; p = parentOf(p)) if (!(p in out)) out[p] = d();
  }
  return out;
}

const sha = (s: string | Buffer): string => createHash('sha256').update(s).digest('hex');
let ino = 1;

export function memTree(spec: Spec, root = '/mem'): EtcTree {
  const entries = new Map<string, EtcEntry>();
  entries.set('', { type: 'dir', mode: 0o755, uid: 0, gid: 0, size: 0, ino: ino++, mtimeMs: 0 });
  for (const [rel, n] of Object.entries(normalize(spec))) {
    const base = { ino: ino++, mtimeMs: 0 };
    if (n.t === 'f') entries.set(rel, { type: 'file', mode: n.m, uid: n.u, gid: n.g, size: Buffer.byteLength(n.c), sha256: sha(n.c), ...base });
    else if (n.t === 'd') entries.set(rel, { type: 'dir', mode: n.m, uid: n.u, gid: n.g, size: 0, ...base });
    else if (n.t === 'l') entries.set(rel, { type: 'symlink', mode: 0o777, uid: n.u, gid: n.g, size: 0, target: n.to, ...base });
    else entries.set(rel, { type: 'fifo', mode: 0o644, uid: 0, gid: 0, size: 0, ...base });
  }
  return { root, entries };
}

export function tempDir(prefix = 'nip-etc-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function materialize(root: string, spec: Spec): void {
  mkdirSync(root, { recursive: true });
  const all = normalize(spec);
  for (const rel of Object.keys(all).sort((a, b) => a.split('/').length - b.split('/').length)) {
    const n = all[rel] as Node;
    const abs = join(root, rel);
    if (n.t === 'd') {
      mkdirSync(abs);
      lchownSync(abs, n.u, n.g);
      chmodSync(abs, n.m);
    } else if (n.t === 'f') {
      writeFileSync(abs, n.c);
      lchownSync(abs, n.u, n.g);
      chmodSync(abs, n.m);
      for (const [k, v] of Object.entries(n.x ?? {})) xattrs().setAttributeSync(abs, k, v);
    } else if (n.t === 'l') {
      symlinkSync(n.to, abs);
      lchownSync(abs, n.u, n.g);
    } else {
      execFileSync('mkfifo', [abs]);
    }
  }
}

export interface SnapEntry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  content?: string;
  target?: string;
  xattrs: Record<string, string>;
}

/** Everything that matters about a tree except times and inode numbers. */
export function snapshot(root: string, skipTop: string[] = []): Map<string, SnapEntry> {
  const out = new Map<string, SnapEntry>();
  const visit = (rel: string): void => {
    const abs = rel === '' ? root : join(root, rel);
    const st = lstatSync(abs);
    const x: Record<string, string> = {};
    for (const [k, v] of [...readXattrs(abs)].sort()) x[k] = v.toString('hex');
    const e: SnapEntry = { type: '?', mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, xattrs: x };
    if (st.isFile()) Object.assign(e, { type: 'file', content: readFileSync(abs).toString('utf8') });
    else if (st.isSymbolicLink()) Object.assign(e, { type: 'symlink', target: readlinkSync(abs, 'utf8'), mode: 0 });
    else if (st.isDirectory()) e.type = 'dir';
    else if (st.isFIFO()) e.type = 'fifo';
    out.set(rel, e);
    if (st.isDirectory()) {
      for (const name of readdirSync(abs).sort()) {
        if (rel === '' && skipTop.includes(name)) continue;
        visit(rel === '' ? name : `${rel}/${name}`);
      }
    }
  };
  visit('');
  return out;
}

/** A snapshot of a spec as the merge should leave it on disk (root excluded). */
export function specSnapshot(spec: Spec): Map<string, Omit<SnapEntry, 'xattrs'>> {
  const out = new Map<string, Omit<SnapEntry, 'xattrs'>>();
  for (const [rel, n] of Object.entries(normalize(spec))) {
    if (n.t === 'f') out.set(rel, { type: 'file', mode: n.m, uid: n.u, gid: n.g, content: n.c });
    else if (n.t === 'd') out.set(rel, { type: 'dir', mode: n.m, uid: n.u, gid: n.g });
    else if (n.t === 'l') out.set(rel, { type: 'symlink', mode: 0, uid: n.u, gid: n.g, target: n.to });
    else out.set(rel, { type: 'fifo', mode: 0o644, uid: 0, gid: 0 });
  }
  return out;
}

export function withoutXattrs(snap: Map<string, SnapEntry>): Map<string, Omit<SnapEntry, 'xattrs'>> {
  const out = new Map<string, Omit<SnapEntry, 'xattrs'>>();
  for (const [k, { xattrs: _x, ...rest }] of snap) if (k !== '') out.set(k, rest);
  return out;
}

export function sameNode(a: Node | undefined, b: Node | undefined): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

/**
 * ostree's merge, written independently of src/etc/plan.ts: start from new, replay the local
 * diff (deleted paths removed, added and modified paths copied from current, missing parents
 * made from current). A local non-directory change where new has a directory is a conflict.
 * Project rules on top (docs/etc-merge.md): FIFOs in current stay, FIFOs elsewhere are ignored,
 * and a directory holding local changes survives upstream turning it into a file.
 */
export function modelMerge(baseIn: Spec, currentIn: Spec, nextIn: Spec): { result: Spec } | { conflict: string[] } {
  const drop = (s: Spec): Spec => Object.fromEntries(Object.entries(normalize(s)).filter(([, n]) => n.t !== 'p'));
  const base = drop(baseIn);
  const current = normalize(currentIn);
  const result: Spec = drop(nextIn);
  const under = (p: string, q: string): boolean => q.startsWith(`${p}/`);
  const removeTree = (p: string): void => {
    for (const q of Object.keys(result)) if (q === p || under(p, q)) delete result[q];
  };
  const conflicts: string[] = [];
  const paths = [...new Set([...Object.keys(base), ...Object.keys(current)])].sort((a, b) => a.split('/').length - b.split('/').length || (a < b ? -1 : 1));
  for (const p of paths) {
    const b = base[p];
    const c = current[p];
    if (c && b && sameNode(b, c)) continue;
    if (!c) {
      // Deleted locally. Under a path that is itself gone there is nothing left to delete.
      removeTree(p);
      continue;
    }
    const r = result[p];
    if (c.t !== 'd' && c.t !== 'p' && r?.t === 'd') {
      conflicts.push(p);
      continue;
    }
    // Ensure parents: each missing or non-directory parent becomes current's directory.
    const chain: string[] = [];
    for (let q = parentOf(p); q !== ''; q = parentOf(q)) chain.unshift(q);
    for (const q of chain) {
      if (result[q]?.t !== 'd') {
        removeTree(q);
        result[q] = current[q] as Node;
      }
    }
    if (c.t === 'd') {
      // A changed or added directory that new does not have as a directory is copied whole from
      // current (ostree's copy_dir_recurse): everything below it, changed locally or not.
      if (r?.t !== 'd') {
        removeTree(p);
        for (const [q, n] of Object.entries(current)) if (under(p, q)) result[q] = n;
      }
      result[p] = c;
    } else {
      removeTree(p);
      result[p] = c;
    }
  }
  return conflicts.length ? { conflict: conflicts } : { result };
}

// --- seeded generator -------------------------------------------------------------------------

export { rng };

const NAMES = ['a', 'b', 'conf', 'with space', 'new\nline', 'ünï€', 'd1', 'd2'];

/** Base, then current and new as independent mutations of it. Small name pool forces overlaps. */
export function randomTrees(seed: number): { base: Spec; current: Spec; next: Spec } {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const randomNode = (): Node => {
    const k = r();
    if (k < 0.55) return f(pick(['x', 'y', 'zz', '']), pick([0o644, 0o600, 0o755]), pick([0, 1000]), 0);
    if (k < 0.8) return d(pick([0o755, 0o700]), pick([0, 1000]), 0);
    if (k < 0.97) return l(pick(['a', '../x', '/nowhere', 'conf']), pick([0, 1000]), 0);
    return fifo();
  };
  const base: Spec = {};
  const grow = (spec: Spec, dir: string, depth: number): void => {
    const count = Math.floor(r() * 4);
    for (let k = 0; k < count; k++) {
      const rel = dir === '' ? pick(NAMES) : `${dir}/${pick(NAMES)}`;
      if (rel in spec) continue;
      const n = depth >= 2 && r() < 0.6 ? f(pick(['x', 'y'])) : randomNode();
      spec[rel] = n;
      if (n.t === 'd') grow(spec, rel, depth + 1);
    }
  };
  grow(base, '', 0);
  const mutate = (src: Spec): Spec => {
    const out: Spec = { ...src };
    for (const rel of Object.keys(src)) {
      if (!(rel in out)) continue;
      const k = r();
      const n = out[rel] as Node;
      if (k < 0.08) {
        for (const q of Object.keys(out)) if (q === rel || q.startsWith(`${rel}/`)) delete out[q];
      } else if (k < 0.16) {
        if (n.t === 'f') out[rel] = { ...n, c: `${n.c}!` };
        else if (n.t === 'l') out[rel] = { ...n, to: `${n.to}2` };
      } else if (k < 0.22 && (n.t === 'f' || n.t === 'd')) {
        out[rel] = { ...n, m: n.m === 0o700 ? 0o750 : 0o700 };
      } else if (k < 0.26 && n.t !== 'p') {
        out[rel] = { ...n, u: n.u === 0 ? 1001 : 0 };
      } else if (k < 0.31) {
        for (const q of Object.keys(out)) if (q.startsWith(`${rel}/`)) delete out[q];
        out[rel] = randomNode();
        if ((out[rel] as Node).t === 'd' && n.t === 'd') out[rel] = f('was a dir');
      }
    }
    // Additions, inside existing directories or at the top.
    const dirs = ['', ...Object.keys(out).filter((q) => out[q]?.t === 'd')];
    for (let k = Math.floor(r() * 3); k > 0; k--) {
      const dir = pick(dirs);
      const rel = dir === '' ? pick(NAMES) : `${dir}/${pick(NAMES)}`;
      if (rel in out || rel.split('/').length > 4) continue;
      out[rel] = randomNode();
      if ((out[rel] as Node).t === 'd' && r() < 0.5) out[`${rel}/${pick(NAMES)}`] = f('deep');
    }
    return out;
  };
  return { base, current: mutate(base), next: mutate(base) };
}

export function cleanup(...dirs: string[]): void {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}

/** A small /etc that makes every kind of action, for the rollback and crash tests. */
export function realistic(): { base: Spec; current: Spec; next: Spec } {
  const base: Spec = {
    'hostname': f('localhost\n'),
    'kubernetes/kubelet.conf': f('old kubelet\n'),
    'kubernetes/manifests': d(),
    'NetworkManager/system-connections': d(0o700),
    'crio/crio.conf': f('old crio\n'),
    'obsolete/a': f('a'),
    'obsolete/b/c': f('c'),
    'dir-to-file/x': f('x'),
    'file-to-dir': f('f'),
    'link-to-file': l('hostname'),
    'file-to-link': f('target'),
    'modes': f('m', 0o644),
    'owned': f('o'),
    'suid': f('s', 0o4755),
    'remodded': d(0o755),
  };
  const current: Spec = {
    ...base,
    'pull-secret.json': f('{"auths":{"r":{"auth":"c2VjcmV0"}}}', 0o600, 0, 0, { 'user.kept': 'yes' }),
    'kubernetes/kubelet.conf': f('local kubelet\n', 0o600),
    'NetworkManager/system-connections/eth0.nmconnection': f('[connection]\n', 0o600),
    'with space/and\nnewline': f('odd'),
    'remodded': d(0o700),
    'hostname': f('localhost\n', 0o644, 0, 0, { 'user.note': 'xattr only' }),
  };
  const next: Spec = {
    'hostname': f('localhost\n'),
    'kubernetes/kubelet.conf': f('new kubelet\n'),
    'kubernetes/manifests': d(),
    'NetworkManager/system-connections': d(0o700),
    'crio/crio.conf': f('new crio\n', 0o640, 0, 0, { 'user.from': 'image' }),
    'crio/crio.conf.d/10-new.conf': f('drop-in\n'),
    'dir-to-file': f('now a file'),
    'file-to-dir/inner': f('inner'),
    'link-to-file': f('real file'),
    'file-to-link': l('hostname'),
    'modes': f('m', 0o600),
    'owned': f('o', 0o644, 1000, 1000),
    'suid': f('s', 0o4755, 0, 1000),
    'remodded': d(0o755),
    'remodded/new-upstream.conf': f('new'),
    'brand/new/deep/file': f('deep', 0o640),
    'brand/link': l('../hostname'),
  };
  return { base, current, next };
}
