// ostree-native node images built from a real `ostree commit`, written the way ostree-ext's
// chunked exporter lays them out (containers/bootc crates/ostree-ext/src/tar/export.rs):
//
//   layer 1: ./ (root dirmeta), sysroot/ostree/repo/{objects/00..ff, refs, state, tmp, config},
//            the .commit (+ .commitmeta), every .dirmeta/.dirtree with the directories they describe
//            (./usr, ./etc for usr/etc, ...), var/tmp, then the content objects left to no chunk
//   layers 2..N+1: one chunk each (the repo structure again, then its content objects)
//   content object: <csum>.file-xattrs-link (a regular file holding a(ayay), or the pre-2025 form:
//            a hardlink to a shared <sha256>.file-xattrs), then PAX SCHILY.xattr.* (everything but
//            security.selinux) + <csum>.file, then every checkout path as a hardlink to it; a
//            zero-size regular file is a plain file at its checkout path instead (no xattrs)
//   config labels: ostree.commit, ostree.final-diffid (the last chunk's diff_id), ostree.bootable,
//            containers.bootc=1, version
//
// Debian's ostree 2022.7 cannot commit into a bare-split-xattrs repo, so the commit goes into a
// `bare` repo (whose objects are real files with their owners, modes and xattrs) and the split
// form is written here. `ostree fsck` on the extracted repo part checks the result.
import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { readXattrs } from '../../src/xattr.ts';
import { buildOciLayout, gzip, sha256, OCI_LAYER_GZIP, type BuiltImage } from './oci-image.ts';
import { TarBuilder, type EntrySpec } from './tar-builder.ts';

export interface CommitEntry {
  /** Path in the commit without the leading slash; '' is the root. */
  path: string;
  type: 'dir' | 'file' | 'symlink';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Content checksum (files and symlinks), or the dirtree checksum (directories). */
  checksum: string;
  /** Directories: the dirmeta checksum. */
  meta?: string;
  target?: string;
}

export interface OstreeCommit {
  repo: string;
  commit: string;
  entries: CommitEntry[];
}

const REPO = 'sysroot/ostree/repo';
const REPO_CONFIG = '[core]\nrepo_version=1\nmode=bare-split-xattrs\n';
const LINE = /^([-dl])([0-7]{5}) (\d+) (\d+) +(\d+) ([0-9a-f]{64})(?: ([0-9a-f]{64}))? \{.*?\} (\/.*)$/;

/** Commits `tree` into a fresh bare repo under `work` and lists it with `ostree ls -R -C -X`. */
export async function commitTree(tree: string, work: string, opts: { version?: string; detached?: boolean } = {}): Promise<OstreeCommit> {
  const repo = join(work, 'repo');
  await execa('ostree', ['init', `--repo=${repo}`, '--mode=bare']);
  const args = ['commit', `--repo=${repo}`, '-b', 'main', `--tree=dir=${tree}`, '--timestamp=2026-01-01T00:00:00Z',
    `--add-metadata-string=version=${opts.version ?? '9.6.20260101-0'}`, '--add-metadata=ostree.bootable=true'];
  if (opts.detached !== false) args.push('--add-detached-metadata-string=ostree.fixture=1');
  const commit = (await execa('ostree', args)).stdout.trim();
  const listed = (await execa('ostree', ['ls', `--repo=${repo}`, '-R', '-C', '-X', commit])).stdout;
  const entries: CommitEntry[] = [];
  for (const line of listed.split('\n')) {
    const m = LINE.exec(line);
    if (!m) throw new Error(`cannot parse ostree ls line: ${line}`);
    const [, t, mode, uid, gid, size, csum, meta, rest] = m as unknown as string[];
    const type = t === 'd' ? 'dir' : t === 'l' ? 'symlink' : 'file';
    const [path, target] = type === 'symlink' ? rest!.split(' -> ') : [rest!];
    entries.push({
      path: path!.slice(1), type, mode: parseInt(mode!, 8), uid: Number(uid), gid: Number(gid), size: Number(size),
      checksum: csum!, ...(meta ? { meta } : {}), ...(target !== undefined ? { target } : {}),
    });
  }
  return { repo, commit, entries };
}

/** GVariant a(ayay), names NUL-terminated and sorted (as ostree stores them). */
export function encodeXattrList(xattrs: Map<string, Buffer>): Buffer {
  const width = (n: number): number => (n === 0 ? 0 : n <= 0xff ? 1 : n <= 0xffff ? 2 : 4);
  const le = (v: number, w: number): Buffer => { const b = Buffer.alloc(w); b.writeUIntLE(v, 0, w); return b; };
  const frame = (body: Buffer, ends: number[]): Buffer => {
    for (let w = width(body.length); ; w = w === 0 ? 1 : w * 2) {
      if (width(body.length + ends.length * w) <= w || ends.length === 0) return Buffer.concat([body, ...ends.map((e) => le(e, w))]);
    }
  };
  const names = [...xattrs.keys()].sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const tuples = names.map((n) => {
    const key = Buffer.from(`${n}\0`);
    return frame(Buffer.concat([key, xattrs.get(n)!]), [key.length]);
  });
  const ends: number[] = [];
  let at = 0;
  for (const t of tuples) ends.push((at += t.length));
  return frame(Buffer.concat(tuples), ends);
}

export const objectPath = (csum: string, ext: string): string => `${REPO}/objects/${csum.slice(0, 2)}/${csum.slice(2)}.${ext}`;
/** ostree-ext exports /usr/etc as /etc. */
export const exportedPath = (p: string): string => (p === 'usr/etc' || p.startsWith('usr/etc/') ? p.slice(4) : p);

export interface ExportOptions {
  /** Content chunk layers after the commit layer (ostree-ext: at most 64). */
  chunks: number;
  /** 'file': the .file-xattrs-link holds the variant (2025-09 on); 'hardlink': links to a shared .file-xattrs. */
  xattrsLink: 'file' | 'hardlink';
}

interface ContentObject {
  csum: string;
  type: 'file' | 'symlink';
  paths: string[];
  size: number;
}

function repoStructure(t: TarBuilder): void {
  for (const d of ['sysroot', 'sysroot/ostree', REPO, `${REPO}/objects`]) t.dir(d, { mtime: 0 });
  for (let i = 0; i < 256; i++) t.dir(`${REPO}/objects/${i.toString(16).padStart(2, '0')}`, { mtime: 0 });
  for (const d of ['extensions', 'refs', 'refs/heads', 'refs/mirrors', 'refs/remotes', 'state', 'tmp', 'tmp/cache']) t.dir(`${REPO}/${d}`, { mtime: 0 });
  t.file(`${REPO}/config`, REPO_CONFIG, { mtime: 0 });
}

function metadataObjects(repo: string): Array<{ name: string; data: Buffer }> {
  const out: Array<{ name: string; data: Buffer }> = [];
  for (const sub of readdirSync(join(repo, 'objects')).sort()) {
    for (const n of readdirSync(join(repo, 'objects', sub)).sort()) {
      if (/\.(commit|commitmeta|dirtree|dirmeta)$/.test(n)) out.push({ name: `${REPO}/objects/${sub}/${n}`, data: readFileSync(join(repo, 'objects', sub, n)) });
    }
  }
  return out;
}

class ObjectWriter {
  private readonly sharedXattrs = new Set<string>();
  private readonly c: OstreeCommit;
  private readonly opts: ExportOptions;
  constructor(c: OstreeCommit, opts: ExportOptions) {
    this.c = c;
    this.opts = opts;
  }

  write(t: TarBuilder, o: ContentObject): void {
    const file = join(this.c.repo, 'objects', o.csum.slice(0, 2), `${o.csum.slice(2)}.file`);
    const st = lstatSync(file);
    const xattrs = readXattrs(file);
    const variant = encodeXattrList(xattrs);
    const link = objectPath(o.csum, 'file-xattrs-link');
    if (this.opts.xattrsLink === 'file') t.file(link, variant, { mtime: 0 });
    else {
      const shared = objectPath(createHash('sha256').update(variant).digest('hex'), 'file-xattrs');
      if (!this.sharedXattrs.has(shared)) {
        this.sharedXattrs.add(shared);
        t.file(shared, variant, { mtime: 0 });
      }
      t.hardlink(link, shared, { mtime: 0 });
    }
    const pax: Record<string, Buffer> = {};
    for (const [k, v] of xattrs) if (k !== 'security.selinux') pax[k] = v;
    const head: Partial<EntrySpec> = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: 0, xattrs: pax };
    const obj = objectPath(o.csum, 'file');
    if (o.type === 'symlink') t.symlink(obj, readlinkSync(file), head);
    else t.file(obj, readFileSync(file), head);
    for (const p of o.paths) {
      const at = exportedPath(p);
      if (o.type === 'file' && o.size === 0) t.file(at, '', { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: 0 });
      else t.hardlink(at, obj, { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, mtime: 0 });
    }
  }
}

/** The uncompressed layer tars: the commit layer, then `chunks` chunk layers. */
export function exportOstreeLayers(c: OstreeCommit, opts: ExportOptions): Buffer[] {
  const objects = new Map<string, ContentObject>();
  for (const e of c.entries) {
    if (e.type === 'dir') continue;
    const o = objects.get(e.checksum) ?? { csum: e.checksum, type: e.type, paths: [], size: e.size };
    o.paths.push(e.path);
    objects.set(e.checksum, o);
  }
  const all = [...objects.values()].sort((a, b) => (a.paths[0]! < b.paths[0]! ? -1 : 1));
  // Round-robin, the remainder (every chunks+1-th object) stays in the commit layer.
  const chunks: ContentObject[][] = Array.from({ length: opts.chunks }, () => []);
  const remainder: ContentObject[] = [];
  all.forEach((o, i) => {
    const slot = i % (opts.chunks + 1);
    if (slot === opts.chunks) remainder.push(o);
    else chunks[slot]!.push(o);
  });
  // ostree-ext starts a fresh writer per layer: each layer carries its own shared .file-xattrs.
  const first = new TarBuilder();
  const root = c.entries.find((e) => e.path === '')!;
  first.dir('./', { mode: root.mode & 0o7777, uid: root.uid, gid: root.gid, mtime: 0 });
  repoStructure(first);
  const meta = metadataObjects(c.repo);
  const ordered = [...meta.filter((m) => m.name.endsWith('.commit')), ...meta.filter((m) => m.name.endsWith('.commitmeta')), ...meta.filter((m) => !/\.commit(meta)?$/.test(m.name))];
  for (const m of ordered) first.file(m.name, m.data, { mtime: 0 });
  for (const e of c.entries) {
    if (e.type !== 'dir' || e.path === '' || e.path === 'sysroot' || e.path.startsWith('sysroot/')) continue;
    first.dir(`./${exportedPath(e.path)}`, { mode: e.mode & 0o7777, uid: e.uid, gid: e.gid, mtime: 0 });
  }
  if (!c.entries.some((e) => e.path === 'var/tmp')) first.dir('var/tmp', { mode: 0o1777, mtime: 0 });
  const firstWriter = new ObjectWriter(c, opts);
  for (const o of remainder) firstWriter.write(first, o);

  const layers = [first.end()];
  for (const chunk of chunks) {
    const t = new TarBuilder();
    repoStructure(t);
    const writer = new ObjectWriter(c, opts);
    for (const o of chunk) writer.write(t, o);
    layers.push(t.end());
  }
  return layers;
}

export interface OstreeImage extends BuiltImage {
  commit: OstreeCommit;
  /** Uncompressed layer tars, ostree layers first. */
  tars: Buffer[];
  diffIds: string[];
  /** Index of the last ostree layer (ostree.final-diffid). */
  finalOstreeLayer: number;
  labels: Record<string, string>;
}

/** The image config ostree-ext writes: bootc labels, final-diffid = the last ostree layer. */
export function ostreeImageConfig(c: OstreeCommit, tars: Buffer[], finalOstreeLayer: number, version = '9.6.20260101-0'): { labels: Record<string, string>; diffIds: string[]; config: object } {
  const diffIds = tars.map((t) => sha256(t));
  const labels = {
    'ostree.commit': c.commit,
    'ostree.final-diffid': diffIds[finalOstreeLayer]!,
    'ostree.bootable': 'true',
    'containers.bootc': '1',
    version,
  };
  const config = {
    architecture: 'amd64', os: 'linux', created: '2026-01-01T00:00:00Z',
    config: { Labels: labels, Env: ['container=oci'], Cmd: ['/sbin/init'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
  };
  return { labels, diffIds, config };
}

/** An OCI layout of the commit's layers plus `derived` tars on top (podman-build style). */
export async function buildOstreeImage(layoutDir: string, c: OstreeCommit, opts: ExportOptions & { derived?: Buffer[]; version?: string; tag?: string }): Promise<OstreeImage> {
  const tars = [...exportOstreeLayers(c, opts), ...(opts.derived ?? [])];
  const finalOstreeLayer = opts.chunks;
  const { labels, diffIds, config } = ostreeImageConfig(c, tars, finalOstreeLayer, opts.version);
  mkdirSync(layoutDir, { recursive: true });
  const layers = await Promise.all(tars.map(async (t, i) => ({ data: await gzip(t, 1), mediaType: OCI_LAYER_GZIP, diffId: diffIds[i]! })));
  const img = await buildOciLayout(layoutDir, { tag: opts.tag ?? 'latest', layers, config });
  return { ...img, commit: c, tars, diffIds, finalOstreeLayer, labels };
}

/**
 * A chunkah-style bootable image (FCOS next): `layers` plain content-based layers, each with its
 * parent directories and a few files; xattrs only in PAX, no ostree objects, no security.selinux;
 * labels containers.bootc=1 and ostree.bootable, no ostree.commit.
 */
export async function buildChunkahImage(layoutDir: string, opts: { layers: number; filesPerLayer?: number; tag?: string; oneLayer?: boolean }): Promise<BuiltImage & { tars: Buffer[] }> {
  const per = opts.filesPerLayer ?? 4;
  const tars: Buffer[] = [];
  for (let i = 0; i < opts.layers; i++) {
    const t = new TarBuilder();
    const pkg = `usr/lib/pkg${String(i).padStart(3, '0')}`;
    t.dir('usr', { mtime: 0 }).dir('usr/lib', { mtime: 0 }).dir(pkg, { mtime: 0 });
    for (let f = 0; f < per; f++) {
      const xattrs: Record<string, Buffer> = f === 0 ? { 'user.component': Buffer.from(`pkg${i}`) } : {};
      if (f === 1 && i % 50 === 0) xattrs['security.capability'] = Buffer.from('0100000200200000000000000000000000000000', 'hex');
      t.file(`${pkg}/f${f}`, `layer ${i} file ${f}\n`.repeat(1 + f * 8), { mtime: 0, mode: f === 1 ? 0o755 : 0o644, xattrs });
    }
    if (i === 0) t.dir('etc', { mtime: 0 }).file('etc/os-release', 'ID=fedora\nVARIANT_ID=coreos\n', { mtime: 0 });
    tars.push(t.end());
  }
  // oneLayer: the same entries in a single layer (the baseline for a per-layer cost).
  if (opts.oneLayer) tars.splice(0, tars.length, Buffer.concat([...tars.map((t) => t.subarray(0, t.length - 1024)), Buffer.alloc(1024)]));
  const diffIds = tars.map((t) => sha256(t));
  const layers = await Promise.all(tars.map(async (t, i) => ({ data: await gzip(t, 1), mediaType: OCI_LAYER_GZIP, diffId: diffIds[i]! })));
  mkdirSync(layoutDir, { recursive: true });
  const img = await buildOciLayout(layoutDir, {
    tag: opts.tag ?? 'latest',
    layers,
    config: {
      architecture: 'amd64', os: 'linux', created: '2026-08-01T00:00:00Z',
      config: { Labels: { 'containers.bootc': '1', 'ostree.bootable': 'true', version: '44.20260801.20.0' } },
      rootfs: { type: 'layers', diff_ids: diffIds },
    },
  });
  return { ...img, tars };
}
