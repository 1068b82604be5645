// Seeded random cases for delta staging: a booted /usr and the layers of a node image that
// shares most of it, with every kind of difference the delta must get right. The expected result
// is not computed here: the oracle unpacks the same layers in full and compares the trees.
//   booted side: booted-only files and directories, a symlink where the image has a directory,
//     hardlinked and copied twins;
//   layer 1: the shared tree with changes of content (same size and not), mode, owner, xattrs,
//     symlink target, type (file <-> symlink, file <-> directory), image-only paths, hardlinks,
//     an implicit parent directory;
//   layer 2: whiteouts of files and directories, a file put back to its booted version, an
//     identical file replaced, hardlinks to identical files and to an identical symlink, an
//     opaque directory with children re-added, a same-layer write then whiteout;
//   layer 3: a whited-out directory created again, hardlinks to a put-back and a rewritten file,
//     a whiteout and the identical file again, an opaque directory left empty.
import { chmodSync, linkSync, lchownSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { xattrs } from '../../src/xattr.ts';
import { rng } from './rng.ts';
import { TarBuilder } from './tar-builder.ts';

export type NodeSpec =
  | { type: 'dir'; mode: number; uid: number; gid: number; xattrs: Record<string, Buffer> }
  | { type: 'file'; mode: number; uid: number; gid: number; xattrs: Record<string, Buffer>; data: Buffer }
  | { type: 'symlink'; uid: number; gid: number; target: string }
  | { type: 'hardlink'; target: string };

export interface RandomCase {
  /** Paths relative to the booted /usr's parent ('usr/...'), parents before children. */
  booted: Map<string, NodeSpec>;
  layers: Buffer[];
}

type Tree = Map<string, NodeSpec>;

export function randomCase(seed: number, size = 120): RandomCase {
  const r = rng(seed);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
  const chance = (p: number): boolean => r() < p;
  const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => Math.floor(r() * 256)));
  const sizes = [0, 1, 7, 100, 4096, 20_000, 300_000];
  const meta = (): { mode: number; uid: number; gid: number } => ({ mode: pick([0o644, 0o644, 0o755, 0o4755, 0o600]), uid: pick([0, 0, 0, 1000]), gid: pick([0, 0, 5]) });
  const xa = (): Record<string, Buffer> => (chance(0.2) ? { 'user.k': bytes(1 + Math.floor(r() * 8)) } : {});
  const file = (): NodeSpec => ({ type: 'file', ...meta(), xattrs: xa(), data: bytes(pick(sizes)) });
  const dir = (): NodeSpec => ({ type: 'dir', mode: pick([0o755, 0o755, 0o700]), uid: 0, gid: 0, xattrs: xa() });

  const base: Tree = new Map([['usr', { type: 'dir', mode: 0o755, uid: 0, gid: 0, xattrs: {} }]]);
  const dirs = ['usr'];
  for (let i = 0; i < size / 8; i++) {
    const p = `${pick(dirs)}/d${i}`;
    base.set(p, dir());
    dirs.push(p);
  }
  const files: string[] = [];
  for (let i = 0; i < size; i++) {
    const p = `${pick(dirs)}/f${i}`;
    if (chance(0.15)) base.set(p, { type: 'symlink', uid: 0, gid: 0, target: pick(['f1', '../x', '/usr/bin/true', `d${i}`]) });
    else {
      base.set(p, file());
      files.push(p);
    }
  }
  base.set('usr/lnk', { type: 'symlink', uid: 0, gid: 0, target: 'd0' });
  base.set('usr/d0', base.get('usr/d0') ?? dir());
  base.set('usr/d0/shared', { type: 'file', mode: 0o644, uid: 0, gid: 0, xattrs: {}, data: Buffer.from('same') });
  for (const p of ['usr/implicit', 'usr/implicit/sub']) base.set(p, { type: 'dir', mode: 0o755, uid: 0, gid: 0, xattrs: {} });
  base.set('usr/implicit/sub/f', { type: 'file', mode: 0o644, uid: 0, gid: 0, xattrs: {}, data: Buffer.from('implicit') });

  const booted: Tree = new Map(base);
  for (let i = 0; i < size / 10; i++) booted.set(`${pick(dirs)}/bo${i}`, file());
  booted.set('usr/bootonly', dir());
  booted.set('usr/bootonly/a', file());
  booted.set('usr/bootonly/sub', dir());
  booted.set('usr/bootonly/sub/b', file());
  // Twins: a hardlink the image also has, a hardlink the image writes as a copy.
  const twin = pick(files);
  booted.set('usr/twin-link', { type: 'hardlink', target: twin });
  booted.set('usr/twin-copy', base.get(twin)!);

  const img: Tree = new Map(base);
  img.delete('usr/lnk');
  img.set('usr/lnk', { type: 'dir', mode: 0o755, uid: 0, gid: 0, xattrs: {} });
  img.set('usr/lnk/shared', base.get('usr/d0/shared')!);
  for (const p of [...img.keys()]) {
    const n = img.get(p);
    // The twin's hardlinks in layer 1 need it to stay a file, under directories.
    if (!n || p === 'usr' || p === twin || twin.startsWith(`${p}/`) || !chance(0.35)) continue;
    const kind = pick(['same-size', 'size', 'mode', 'owner', 'xattr', 'target', 'to-symlink', 'to-dir', 'to-file', 'dir-meta']);
    if (n.type === 'file' && kind === 'same-size' && n.data.length > 0) {
      const data = Buffer.from(n.data);
      const at = Math.floor(r() * data.length);
      data[at] = (data[at]! + 1) % 256;
      img.set(p, { ...n, data });
    } else if (n.type === 'file' && kind === 'size') img.set(p, { ...n, data: Buffer.concat([n.data, bytes(3)]) });
    else if (n.type === 'file' && kind === 'mode') img.set(p, { ...n, mode: n.mode === 0o644 ? 0o640 : 0o644 });
    else if (n.type === 'file' && kind === 'owner') img.set(p, { ...n, uid: n.uid === 0 ? 1001 : 0 });
    else if ((n.type === 'file' || n.type === 'dir') && kind === 'xattr') img.set(p, { ...n, xattrs: 'user.k' in n.xattrs ? {} : { 'user.k': bytes(4) } });
    else if (n.type === 'symlink' && kind === 'target') img.set(p, { ...n, target: `${n.target}-new` });
    else if (n.type === 'file' && kind === 'to-symlink') img.set(p, { type: 'symlink', uid: 0, gid: 0, target: 'elsewhere' });
    else if (n.type === 'file' && kind === 'to-dir') {
      img.set(p, dir());
      img.set(`${p}/inside`, file());
    } else if (n.type === 'dir' && kind === 'to-file' && p !== 'usr/d0') {
      for (const q of [...img.keys()]) if (q.startsWith(`${p}/`)) img.delete(q);
      img.set(p, file());
    } else if (n.type === 'dir' && kind === 'dir-meta') img.set(p, { ...n, mode: 0o711 });
  }
  for (let i = 0; i < size / 10; i++) {
    const parent = pick([...img.keys()].filter((k) => img.get(k)!.type === 'dir'));
    img.set(`${parent}/new${i}`, file());
  }

  const l1 = new TarBuilder();
  const sorted = [...img.keys()].sort();
  const written: string[] = [];
  for (const p of sorted) {
    if (p === 'usr/implicit' || p === 'usr/implicit/sub') continue; // parents left implicit
    emit(l1, p, img.get(p)!);
    if (img.get(p)!.type === 'file') written.push(p);
  }
  const hardlinked: string[] = [];
  for (let i = 0; i < 4 && written.length; i++) {
    const t = pick(written);
    l1.hardlink(`usr/hl${i}`, t);
    img.set(`usr/hl${i}`, { type: 'hardlink', target: t });
    hardlinked.push(t);
  }
  // The booted twin-link is identical when the image links it too.
  l1.hardlink('usr/twin-link', twin);
  img.set('usr/twin-link', { type: 'hardlink', target: twin });
  l1.hardlink('usr/twin-copy', twin);
  img.set('usr/twin-copy', { type: 'hardlink', target: twin });

  const l2 = new TarBuilder();
  const fileNow = (): string[] => [...img.keys()].filter((k) => img.get(k)!.type === 'file' && !hardlinked.includes(k) && k !== twin);
  for (let i = 0; i < 3; i++) {
    const p = pick(fileNow());
    l2.whiteout(p);
    img.delete(p);
  }
  const goneDir = pick(dirs.filter((d) => d !== 'usr' && d !== 'usr/d0' && img.get(d)?.type === 'dir'));
  if (goneDir) {
    l2.whiteout(goneDir);
    for (const q of [...img.keys()]) if (q === goneDir || q.startsWith(`${goneDir}/`)) img.delete(q);
  }
  const putBack = fileNow().filter((k) => booted.get(k)?.type === 'file' && img.get(k) !== booted.get(k)).slice(0, 3);
  for (const p of putBack) {
    emit(l2, p, booted.get(p)!); // put back to the booted version
    img.set(p, booted.get(p)!);
  }
  const rewritten = fileNow().filter((k) => img.get(k) === booted.get(k)).slice(0, 2);
  for (const p of rewritten) {
    const n = img.get(p) as Extract<NodeSpec, { type: 'file' }>;
    const next = { ...n, data: Buffer.concat([n.data, Buffer.from('!')]) };
    emit(l2, p, next);
    img.set(p, next);
  }
  const identical = fileNow().filter((k) => img.get(k) === booted.get(k));
  for (const [i, t] of identical.slice(0, 3).entries()) {
    // To a skipped target: the new name is absent, a booted copy, or a booted file that differs.
    const name = `usr/hs${i}`;
    if (i === 1) booted.set(name, booted.get(t)!);
    if (i === 2) booted.set(name, file());
    l2.hardlink(name, t);
    img.set(name, { type: 'hardlink', target: t });
  }
  // A hardlink may name a symlink (link(2) does not follow it): to an identical one, as a new name.
  const sym = [...img.keys()].find((k) => img.get(k)!.type === 'symlink' && img.get(k) === booted.get(k));
  if (sym) {
    l2.hardlink('usr/hsym', sym);
    img.set('usr/hsym', { type: 'hardlink', target: sym });
  }
  const opq = pick(dirs.filter((d) => d !== 'usr' && d !== 'usr/d0' && img.get(d)?.type === 'dir'));
  if (opq) {
    l2.opaque(opq);
    const kids = [...img.keys()].filter((q) => q.startsWith(`${opq}/`));
    for (const q of kids) img.delete(q);
    for (const q of kids.filter((k) => k.split('/').length === opq.split('/').length + 1 && img.get(k) === undefined && base.get(k)?.type === 'file').slice(0, 2)) {
      emit(l2, q, base.get(q)!);
      img.set(q, base.get(q)!);
    }
    emit(l2, `${opq}/readded`, file());
  }
  l2.file('usr/samelayer', 'x').whiteout('usr/samelayer');

  const l3 = new TarBuilder();
  if (goneDir) {
    emit(l3, goneDir, dir());
    const child = [...booted.keys()].find((k) => k.startsWith(`${goneDir}/`) && k.split('/').length === goneDir.split('/').length + 1 && booted.get(k)!.type === 'file');
    if (child) emit(l3, child, booted.get(child)!);
  }
  // Hardlinks to a file an earlier layer put back (skipped) and to one it rewrote (staged).
  for (const [i, t] of [putBack[0], rewritten[0]].entries()) {
    if (t !== undefined && img.get(t)?.type === 'file') l3.hardlink(`usr/l3link${i}`, t);
  }
  // A whiteout and the same file again, identical, in one layer; an opaque directory left empty.
  const again = [...img.keys()].find((k) => img.get(k)?.type === 'file' && img.get(k) === booted.get(k) && k.split('/').length > 2);
  if (again) {
    l3.whiteout(again);
    emit(l3, again, img.get(again)!);
  }
  const emptied = [...img.keys()].filter((k) => img.get(k)?.type === 'dir' && k.split('/').length > 2).at(-1);
  if (emptied && emptied !== goneDir && !(again ?? '').startsWith(`${emptied}/`)) {
    l3.opaque(emptied);
    for (const q of [...img.keys()]) if (q.startsWith(`${emptied}/`)) img.delete(q);
  }
  return { booted: new Map([...booted].sort(([a], [b]) => (a < b ? -1 : 1))), layers: [l1.end(), l2.end(), l3.end()] };
}

function emit(t: TarBuilder, p: string, n: NodeSpec): void {
  if (n.type === 'dir') t.dir(p, { mode: n.mode, uid: n.uid, gid: n.gid, xattrs: n.xattrs });
  else if (n.type === 'file') t.file(p, n.data, { mode: n.mode, uid: n.uid, gid: n.gid, xattrs: n.xattrs });
  else if (n.type === 'symlink') t.symlink(p, n.target, { uid: n.uid, gid: n.gid });
  else t.hardlink(p, n.target);
}

/** Writes a booted tree under `root` (as root, so owners stick). Parents come first in the map. */
export function writeTree(root: string, tree: ReadonlyMap<string, NodeSpec>): void {
  const x = xattrs();
  for (const [p, n] of tree) {
    const path = `${root}/${p}`;
    if (n.type === 'dir') {
      mkdirSync(path, { recursive: true });
    } else if (n.type === 'file') writeFileSync(path, n.data);
    else if (n.type === 'symlink') symlinkSync(n.target, path);
    else {
      linkSync(`${root}/${n.target}`, path);
      continue;
    }
    lchownSync(path, n.uid, n.gid);
    if (n.type !== 'symlink') {
      chmodSync(path, n.mode);
      for (const [k, v] of Object.entries(n.xattrs)) x.setAttributeSync(path, k, v);
    }
  }
}
