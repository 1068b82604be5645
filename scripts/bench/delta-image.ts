// The node image of the staging-modes bench (issue 14, part 5): the test bed's booted /usr with
// about 10% of its bytes different, the way a node image differs from the boot image it was built
// from (updated packages, added packages, a dropped one):
//   modified, same size   usr/share data files with one byte flipped three quarters in (the
//                         costly case for delta: sizes match, so the bytes are compared)
//   modified, grown       ELF files under usr/lib and usr/bin with seeded bytes appended (the
//                         loader ignores trailing bytes, so the guest still runs; sizes differ)
//   mode only             a few usr/share files made group-writable (metadata-only difference)
//   added                 seeded incompressible files in a new usr/lib/nip-bench and under
//                         existing usr/share/doc directories
//   removed               usr/share/man as a whole (a whiteout in delta mode)
// plus the e2e node layer (kubelet, the probe unit, /etc changes) on top, so the pivot is the
// one the e2e scenarios prove. The changed tree is one zstd layer built with GNU tar from a copy
// of the booted tree (never the shared rootfs itself), cached in .cache/bench by rootfs key.
import { createHash } from 'node:crypto';
import { appendFileSync, chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, lstatSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { rng } from '../../test/helpers/rng.ts';
import { buildOciLayout, gzip, pushLayout, OCI_LAYER_GZIP, OCI_LAYER_ZSTD } from '../../test/helpers/oci-image.ts';
import { nodeLayerEntries, tarOf } from '../../test/helpers/node-image.ts';
import { rootfsKey } from '../testbed/rootfs.ts';

export interface DeltaImageSpec {
  seed: number;
  /** Fractions of the booted /usr's file bytes. */
  flipFraction: number;
  growFraction: number;
  addFraction: number;
  chmodFiles: number;
  removeDir: string;
}

export const DELTA90: DeltaImageSpec = { seed: 14, flipFraction: 0.03, growFraction: 0.02, addFraction: 0.05, chmodFiles: 40, removeDir: 'usr/share/man' };

export interface TreeFile { path: string; size: number; elf: boolean }

export interface ChangePlan {
  flip: string[];
  grow: Array<{ path: string; bytes: number }>;
  chmod: string[];
  add: Array<{ path: string; bytes: number }>;
  remove: string;
  /** Bytes of the image's usr/ files, and of those that differ from the booted ones. */
  imageBytes: number;
  changedBytes: number;
  removedBytes: number;
  bootedBytes: number;
}

const FLIP_DIRS = ['usr/share/locale/', 'usr/share/doc/', 'usr/share/perl/', 'usr/share/zoneinfo/', 'usr/share/info/'];
const GROW_DIRS = ['usr/lib/x86_64-linux-gnu/', 'usr/bin/', 'usr/sbin/', 'usr/lib/systemd/'];
const KiB = 1024;

function shuffled<T>(xs: readonly T[], next: () => number): T[] {
  const a = [...xs];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

/** PURE: which booted files change and how, from the booted tree's regular files (usr/ only). */
export function planChanges(files: readonly TreeFile[], spec: DeltaImageSpec): ChangePlan {
  const next = rng(spec.seed);
  const sorted = [...files].sort((a, b) => (a.path < b.path ? -1 : 1));
  const bootedBytes = sorted.reduce((n, f) => n + f.size, 0);
  const inRemoved = (p: string): boolean => p.startsWith(`${spec.removeDir}/`);
  const removedBytes = sorted.filter((f) => inRemoved(f.path)).reduce((n, f) => n + f.size, 0);
  const kept = sorted.filter((f) => !inRemoved(f.path));
  const taken = new Set<string>();
  // Files of 1 KiB..2 MiB, so no single file decides the fraction.
  const pick = (ok: (f: TreeFile) => boolean, budget: number): TreeFile[] => {
    const out: TreeFile[] = [];
    let sum = 0;
    for (const f of shuffled(kept.filter((f) => ok(f) && !taken.has(f.path) && f.size >= KiB && f.size <= 2 * KiB * KiB), next)) {
      if (sum >= budget) break;
      out.push(f);
      taken.add(f.path);
      sum += f.size;
    }
    return out;
  };
  const flip = pick((f) => FLIP_DIRS.some((d) => f.path.startsWith(d)), spec.flipFraction * bootedBytes);
  const grow = pick((f) => f.elf && GROW_DIRS.some((d) => f.path.startsWith(d)), spec.growFraction * bootedBytes)
    .map((f) => ({ path: f.path, bytes: 4 * KiB + Math.floor(next() * 60 * KiB) }));
  const chmod = shuffled(kept.filter((f) => FLIP_DIRS.some((d) => f.path.startsWith(d)) && !taken.has(f.path)), next).slice(0, spec.chmodFiles);
  const add: Array<{ path: string; bytes: number }> = [];
  const addBudget = spec.addFraction * bootedBytes;
  const docDirs = [...new Set(kept.filter((f) => f.path.startsWith('usr/share/doc/')).map((f) => f.path.split('/').slice(0, 4).join('/')))];
  for (let sum = 0, i = 0; sum < addBudget; i++) {
    // A long tail, 1 KiB .. 1 MiB; a quarter of them into existing directories.
    const bytes = Math.round(KiB * 2 ** (next() * 10));
    const dir = i % 4 === 3 && docDirs.length ? docDirs[Math.floor(next() * docDirs.length)]! : `usr/lib/nip-bench/d${i % 16}`;
    add.push({ path: `${dir}/nip-bench-${i}.bin`, bytes });
    sum += bytes;
  }
  const sizeOf = new Map(kept.map((f) => [f.path, f.size]));
  const grownBytes = grow.reduce((n, g) => n + sizeOf.get(g.path)! + g.bytes, 0);
  const changedBytes = flip.reduce((n, f) => n + f.size, 0) + grownBytes + chmod.reduce((n, f) => n + f.size, 0) + add.reduce((n, a) => n + a.bytes, 0);
  const imageBytes = bootedBytes - removedBytes + grow.reduce((n, g) => n + g.bytes, 0) + add.reduce((n, a) => n + a.bytes, 0);
  return { flip: flip.map((f) => f.path), grow, chmod: chmod.map((f) => f.path), add, remove: spec.removeDir, imageBytes, changedBytes, removedBytes, bootedBytes };
}

/** Regular files under root/usr (not usr/etc, which the image carries as etc/), with one link. */
export function listTree(root: string): TreeFile[] {
  const out: TreeFile[] = [];
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel))) {
      const p = `${rel}/${name}`;
      if (p === 'usr/etc') continue;
      const st = lstatSync(join(root, p));
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && st.nlink === 1) {
        let elf = false;
        if (st.size >= 4) elf = readFileSync(join(root, p)).subarray(0, 4).equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
        out.push({ path: p, size: st.size, elf });
      }
    }
  };
  walk('usr');
  return out;
}

/** Seeded incompressible bytes (sha256 in counter mode), so compression cannot hide the change. */
function seededBytes(seed: string, n: number): Buffer {
  const out = Buffer.alloc(n);
  for (let off = 0, i = 0; off < n; off += 32, i++) createHash('sha256').update(`${seed}:${i}`).digest().copy(out, off);
  return out;
}

export interface DeltaImageFacts extends Omit<ChangePlan, 'flip' | 'grow' | 'chmod' | 'add'> {
  flipped: number;
  grown: number;
  chmodded: number;
  added: number;
  /** Bytes of the image's usr/ files that are identical to the booted ones, over all of them. */
  identicalFraction: number;
  layerBytes: number;
}

/** The changed tree as one zstd layer, cached; `tree` is the test bed's extracted rootfs. */
export async function deltaLayer(tree: string, cacheRoot: string, spec: DeltaImageSpec = DELTA90): Promise<{ file: string; facts: DeltaImageFacts }> {
  const key = createHash('sha256').update(JSON.stringify({ rootfs: rootfsKey(), spec, v: 1 })).digest('hex').slice(0, 16);
  const file = join(cacheRoot, `delta90-${key}.tar.zst`);
  const factsFile = `${file}.json`;
  if (existsSync(file) && existsSync(factsFile)) return { file, facts: JSON.parse(readFileSync(factsFile, 'utf8')) as DeltaImageFacts };
  mkdirSync(cacheRoot, { recursive: true });
  const plan = planChanges(listTree(tree), spec);
  const work = join(cacheRoot, `delta90-${key}.work-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work);
  try {
    await execa('cp', ['-a', join(tree, 'usr'), join(tree, 'etc'), work]);
    rmSync(join(work, 'usr/etc'), { recursive: true, force: true });
    rmSync(join(work, plan.remove), { recursive: true, force: true });
    for (const p of plan.flip) {
      const b = readFileSync(join(work, p));
      const at = Math.floor(b.length * 0.75);
      b[at] = b[at]! ^ 0xff;
      writeFileSync(join(work, p), b);
    }
    for (const g of plan.grow) appendFileSync(join(work, g.path), seededBytes(`grow:${g.path}`, g.bytes));
    for (const p of plan.chmod) chmodSync(join(work, p), lstatSync(join(work, p)).mode | 0o020);
    for (const a of plan.add) {
      mkdirSync(join(work, a.path, '..'), { recursive: true });
      writeFileSync(join(work, a.path), seededBytes(`add:${a.path}`, a.bytes));
    }
    const tmp = `${file}.tmp-${process.pid}`;
    // As baseLayer does (test/helpers/node-image.ts): the booted tree's owners and xattrs.
    await execa('sh', ['-c', 'tar -C "$1" --numeric-owner --xattrs --xattrs-include="*" -cf - ./usr ./etc | zstd -q -3 -T2 -o "$2"', 'sh', work, tmp]);
    renameSync(tmp, file);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const { flip, grow, chmod, add, ...rest } = plan;
  const facts: DeltaImageFacts = {
    ...rest, flipped: flip.length, grown: grow.length, chmodded: chmod.length, added: add.length,
    identicalFraction: Math.round((1 - plan.changedBytes / plan.imageBytes) * 1000) / 1000,
    layerBytes: lstatSync(file).size,
  };
  writeFileSync(factsFile, `${JSON.stringify(facts, null, 2)}\n`);
  return { file, facts };
}

/** Builds and pushes the bench's node image: the changed tree, then the e2e node layer. */
export async function pushDeltaImage(tree: string, cacheRoot: string, layoutDir: string, registryHost: string): Promise<{ ref: string; facts: DeltaImageFacts }> {
  const { file, facts } = await deltaLayer(tree, cacheRoot);
  const version = '4.20.0-delta90';
  const img = await buildOciLayout(layoutDir, {
    tag: version,
    layers: [
      { data: readFileSync(file), mediaType: OCI_LAYER_ZSTD },
      { data: await gzip(await tarOf(nodeLayerEntries(version))), mediaType: OCI_LAYER_GZIP },
    ],
  });
  await pushLayout(layoutDir, version, registryHost, 'bench/delta90');
  return { ref: `${registryHost}/bench/delta90@${img.manifestDigest}`, facts };
}
