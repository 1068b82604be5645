// Deterministic reference node images for the benchmarks, generated from a seed and cached.
//
// The tree has the shape of an ostree-native node image: every regular file is stored once as
// sysroot/ostree/repo/objects/XX/<62 hex>.file and hardlinked at its real path under usr/, in the
// same layer (as rpm-ostree's chunked images do). Sizes follow a long tail: mostly small files,
// a few MB-sized ones and some 50-200 MB blobs. File bodies are slices of a seeded pool that
// mixes incompressible bytes with word-like text, so gzip lands near 2.5x, like real binaries.
//
// Layers are streamed tar -> compressor -> file, hashing both sides on the way (diff_id and
// digest), so memory stays flat however big the image is. The result is an OCI layout under
// .cache/bench/<name>-<key>/ that later runs reuse while seed and spec are unchanged.
import { createCipheriv, createHash } from 'node:crypto';
import { createWriteStream, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { rng } from '../../test/helpers/rng.ts';

export interface ImageSpec {
  name: string;
  seed: number;
  layers: number;
  /** Regular files (each one object plus one hardlink). */
  files: number;
  /** Sizes of the big files, bytes. */
  bigFiles: number[];
  /** Bytes of all other files together. */
  smallBytes: number;
  symlinks: number;
  compression: 'gzip' | 'zstd';
  /** Adds a top layer of release-manifests/ (an OpenShift-style release image). */
  releaseTop?: boolean;
}

export interface GeneratedImage {
  spec: ImageSpec;
  layoutDir: string;
  tag: string;
  manifestDigest: string;
  layers: Array<{ digest: string; size: number; mediaType: string; file: string }>;
  compressedBytes: number;
  expandedBytes: number;
  entries: number;
}

const MiB = 1024 * 1024;
const POOL_BYTES = 64 * MiB;
const TAG = 'v1';

export const SPECS: Record<string, ImageSpec> = {
  ref: { name: 'ref', seed: 7, layers: 8, files: 40_000, bigFiles: [200 * MiB, 120 * MiB, 80 * MiB, 50 * MiB], smallBytes: 574 * MiB, symlinks: 2000, compression: 'gzip' },
  'ref-x2': {
    name: 'ref-x2', seed: 7, layers: 8, files: 80_000, bigFiles: [200 * MiB, 120 * MiB, 80 * MiB, 50 * MiB, 190 * MiB, 110 * MiB, 70 * MiB, 60 * MiB],
    smallBytes: 1168 * MiB, symlinks: 4000, compression: 'gzip',
  },
  'ref-zstd': { name: 'ref-zstd', seed: 7, layers: 8, files: 40_000, bigFiles: [200 * MiB, 120 * MiB, 80 * MiB, 50 * MiB], smallBytes: 574 * MiB, symlinks: 2000, compression: 'zstd' },
  release: { name: 'release', seed: 11, layers: 4, files: 3000, bigFiles: [60 * MiB], smallBytes: 90 * MiB, symlinks: 0, compression: 'gzip', releaseTop: true },
  quick: { name: 'quick', seed: 7, layers: 3, files: 2000, bigFiles: [12 * MiB], smallBytes: 24 * MiB, symlinks: 100, compression: 'gzip' },
};


/** 64 MiB: 25% AES-CTR noise (stands in for compressed sections), 75% words. Seeded. */
function makePool(seed: number): Buffer {
  const key = createHash('sha256').update(`pool-${seed}`).digest();
  const noise = createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(POOL_BYTES));
  const rand = rng(seed ^ 0x5eed);
  const words = Array.from({ length: 512 }, (_, i) => Buffer.from(`${i.toString(36)}${'abcdefghijklmnopqrstuvwxyz'.slice(i % 20, (i % 20) + 3 + (i % 7))} `));
  const pool = Buffer.allocUnsafe(POOL_BYTES);
  let off = 0;
  while (off < POOL_BYTES) {
    const run = Math.min(POOL_BYTES - off, 4096 + Math.floor(rand() * 28672));
    if (rand() < 0.25) {
      noise.copy(pool, off, off, off + run);
      off += run;
    } else {
      const end = off + run;
      while (off < end) {
        const w = words[Math.floor(rand() * rand() * words.length)]!;
        off += w.copy(pool, off, 0, Math.min(w.length, end - off));
      }
    }
  }
  return pool;
}

function octal(b: Buffer, value: number, offset: number, len: number): void {
  b.write(`${value.toString(8).padStart(len - 1, '0')}\0`, offset, len, 'latin1');
}

/** One ustar header; names longer than 100 bytes are split into prefix/name at a slash. */
function header(path: string, type: '0' | '1' | '2' | '5', size: number, mode: number, linkname = ''): Buffer {
  const b = Buffer.alloc(512);
  let name = path;
  let prefix = '';
  if (Buffer.byteLength(path) > 100) {
    const cut = path.lastIndexOf('/', 155);
    prefix = path.slice(0, cut);
    name = path.slice(cut + 1);
    if (cut < 0 || Buffer.byteLength(name) > 100) throw new Error(`path too long for the generator: ${path}`);
  }
  if (Buffer.byteLength(linkname) > 100) throw new Error(`link too long for the generator: ${linkname}`);
  b.write(name, 0, 100, 'latin1');
  octal(b, mode, 100, 8);
  octal(b, 0, 108, 8);
  octal(b, 0, 116, 8);
  octal(b, size, 124, 12);
  octal(b, 1_700_000_000, 136, 12);
  b.fill(0x20, 148, 156);
  b.write(type, 156, 1, 'latin1');
  b.write(linkname, 157, 100, 'latin1');
  b.write('ustar\0' + '00', 257, 8, 'latin1');
  b.write('root', 265, 32, 'latin1');
  b.write('root', 297, 32, 'latin1');
  b.write(prefix, 345, 155, 'latin1');
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
  return b;
}

interface FilePlan { layer: number; path: string; object: string; size: number; poolOffset: number; mode: number }

/** Every file's layer, path, object name and size, from the seed alone. */
function planFiles(spec: ImageSpec): { files: FilePlan[]; symlinks: Array<{ layer: number; path: string; target: string }> } {
  const rand = rng(spec.seed * 7919 + spec.files);
  const tops = ['bin', 'lib64', 'libexec', 'share/doc', 'share/locale', 'share/man', 'lib/firmware', 'lib/modules/6.1.0/kernel', 'share/licenses', 'lib/python3.11'];
  const raw: number[] = [];
  for (let i = spec.bigFiles.length; i < spec.files; i++) {
    const r = rand();
    // Long tail: 70% under 8 KiB, 25% under 64 KiB, 4.5% under 1 MiB, 0.5% up to 8 MiB.
    raw.push(r < 0.7 ? 200 + rand() * 8000 : r < 0.95 ? 8192 + rand() * 57344 : r < 0.995 ? 65536 + rand() * 983040 : MiB + rand() * 7 * MiB);
  }
  const scale = spec.smallBytes / raw.reduce((a, b) => a + b, 0);
  const sizes = [...spec.bigFiles, ...raw.map((s) => Math.max(1, Math.round(s * scale)))];
  const files = sizes.map((size, i): FilePlan => {
    const top = tops[Math.floor(rand() * tops.length)]!;
    const dir = `usr/${top}/d${Math.floor(rand() * 40)}${rand() < 0.5 ? `/s${Math.floor(rand() * 12)}` : ''}`;
    const hex = createHash('sha256').update(`${spec.seed}:${spec.name.replace(/-zstd$/, '')}:${i}`).digest('hex');
    return {
      // Big files get their own layers first (rpm-ostree chunking puts large components alone).
      layer: i < spec.bigFiles.length ? i % spec.layers : Math.floor(rand() * spec.layers),
      path: i < spec.bigFiles.length ? `usr/lib/big/blob-${i}.bin` : `${dir}/f${i}${['', '.so', '.py', '.mo', '.gz'][i % 5]}`,
      object: `sysroot/ostree/repo/objects/${hex.slice(0, 2)}/${hex.slice(2)}.file`,
      size,
      poolOffset: Math.floor(rand() * POOL_BYTES),
      mode: top === 'bin' || top === 'libexec' ? 0o755 : 0o644,
    };
  });
  const symlinks = Array.from({ length: spec.symlinks }, (_, i) => {
    const f = files[Math.floor(rand() * files.length)]!;
    return { layer: f.layer, path: `usr/lib/alternatives/l${i}`, target: `../../${f.path.slice(4)}` };
  });
  return { files, symlinks };
}

const ZEROS = Buffer.alloc(1024);

function* textFile(path: string, text: string): Generator<Buffer> {
  const body = Buffer.from(text);
  yield header(path, '0', body.length, 0o644);
  yield body;
  if (body.length % 512) yield ZEROS.subarray(0, 512 - (body.length % 512));
}

/** release-manifests/: ~400 operator manifests, then image-references (sorted after them). */
function* releaseTar(seed: number): Generator<Buffer> {
  const rand = rng(seed);
  yield header('release-manifests/', '5', 0, 0o755);
  for (let i = 0; i < 400; i++) {
    const lines = Array.from({ length: 40 + Math.floor(rand() * 200) }, (_, j) => `  key${j}: value-${Math.floor(rand() * 1e9).toString(36)}`);
    yield* textFile(`release-manifests/0000_${String(50 + (i % 40)).padStart(2, '0')}_operator-${i}.yaml`, `apiVersion: v1\nkind: ConfigMap\ndata:\n${lines.join('\n')}\n`);
  }
  const tags = ['rhel-coreos', 'rhel-coreos-extensions', 'machine-config-operator', 'cli', 'installer', ...Array.from({ length: 180 }, (_, i) => `component-${i}`)]
    .map((name, i) => ({ name, from: { kind: 'DockerImage', name: `quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:${createHash('sha256').update(`${seed}-${i}`).digest('hex')}` } }));
  yield* textFile('release-manifests/image-references', JSON.stringify({ kind: 'ImageStream', apiVersion: 'image.openshift.io/v1', spec: { tags } }, null, 2));
  yield* textFile('release-manifests/release-metadata', JSON.stringify({ kind: 'cincinnati-metadata-v0', version: '4.99.0' }));
  yield ZEROS;
}

/** The tar bytes of one layer. */
function* layerTar(spec: ImageSpec, layer: number, plan: ReturnType<typeof planFiles>, pool: Buffer): Generator<Buffer> {
  const dirs = new Set<string>();
  const parents = function* (path: string): Generator<Buffer> {
    const parts = path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const d = parts.slice(0, i).join('/');
      if (dirs.has(d)) continue;
      dirs.add(d);
      yield header(`${d}/`, '5', 0, 0o755);
    }
  };
  for (const f of plan.files) {
    if (f.layer !== layer) continue;
    yield* parents(f.object);
    yield header(f.object, '0', f.size, f.mode);
    // A unique first line, so no two objects share content.
    let left = f.size;
    const stamp = Buffer.from(`#${spec.seed}:${f.object.slice(-20)}\n`).subarray(0, left);
    yield stamp;
    left -= stamp.length;
    let off = f.poolOffset;
    while (left > 0) {
      const n = Math.min(left, POOL_BYTES - off, MiB);
      yield pool.subarray(off, off + n);
      left -= n;
      off = (off + n) % POOL_BYTES;
    }
    if (f.size % 512) yield ZEROS.subarray(0, 512 - (f.size % 512));
    yield* parents(f.path);
    yield header(f.path, '1', 0, f.mode, f.object);
  }
  for (const s of plan.symlinks) {
    if (s.layer !== layer) continue;
    yield* parents(s.path);
    yield header(s.path, '2', 0, 0o777, s.target);
  }
  yield ZEROS;
}

function hashing(hash: ReturnType<typeof createHash>, count: { n: number }): Transform {
  return new Transform({
    transform(chunk: Buffer, _e, cb: TransformCallback) {
      hash.update(chunk);
      count.n += chunk.length;
      cb(null, chunk);
    },
  });
}

export function cacheKey(spec: ImageSpec): string {
  return createHash('sha256').update(JSON.stringify({ v: 1, ...spec })).digest('hex').slice(0, 12);
}

function writeBlob(dir: string, data: Buffer): { digest: string; size: number } {
  const hex = createHash('sha256').update(data).digest('hex');
  writeFileSync(join(dir, 'blobs', 'sha256', hex), data);
  return { digest: `sha256:${hex}`, size: data.length };
}

/** Generates the image (or reuses the cached one) and returns its OCI layout. */
export async function generateImage(spec: ImageSpec, cacheRoot: string, say: (s: string) => void = () => undefined): Promise<GeneratedImage> {
  const layoutDir = join(cacheRoot, `${spec.name}-${cacheKey(spec)}`);
  const doneFile = join(layoutDir, 'generated.json');
  if (existsSync(doneFile)) return JSON.parse(readFileSync(doneFile, 'utf8')) as GeneratedImage;
  const work = `${layoutDir}.partial`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(join(work, 'blobs', 'sha256'), { recursive: true });
  const started = Date.now();
  const pool = makePool(spec.seed);
  const plan = planFiles(spec);
  const mediaType = spec.compression === 'gzip' ? 'application/vnd.oci.image.layer.v1.tar+gzip' : 'application/vnd.oci.image.layer.v1.tar+zstd';
  // All layers at once: zlib runs on the libuv pool, so both cores compress.
  const layers = await Promise.all(Array.from({ length: spec.layers + (spec.releaseTop ? 1 : 0) }, async (_, i) => {
    const tarHash = createHash('sha256');
    const blobHash = createHash('sha256');
    const tarCount = { n: 0 };
    const blobCount = { n: 0 };
    const tmp = join(work, `layer-${i}.tmp`);
    const compressor = spec.compression === 'gzip' ? zlib.createGzip({ level: 6 }) : zlib.createZstdCompress({ params: { [zlib.constants.ZSTD_c_compressionLevel]: 3 } });
    const gen = i === spec.layers ? releaseTar(spec.seed) : layerTar(spec, i, plan, pool);
    await pipeline(Readable.from(gen, { objectMode: false, highWaterMark: MiB }), hashing(tarHash, tarCount), compressor, hashing(blobHash, blobCount), createWriteStream(tmp));
    const hex = blobHash.digest('hex');
    const file = join(work, 'blobs', 'sha256', hex);
    renameSync(tmp, file);
    return { digest: `sha256:${hex}`, size: blobCount.n, mediaType, diffId: `sha256:${tarHash.digest('hex')}`, tarBytes: tarCount.n, hex };
  }));
  const entries = plan.files.length * 2 + plan.symlinks.length;
  const config = {
    architecture: 'amd64', os: 'linux', created: '2024-01-01T00:00:00Z',
    config: { Env: ['PATH=/usr/bin'], Labels: { 'ostree.bootable': 'true', 'bench.seed': String(spec.seed) } },
    rootfs: { type: 'layers', diff_ids: layers.map((l) => l.diffId) },
  };
  const cfg = writeBlob(work, Buffer.from(JSON.stringify(config)));
  const manifest = Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...cfg },
    layers: layers.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
  }));
  const m = writeBlob(work, manifest);
  writeFileSync(join(work, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  writeFileSync(join(work, 'index.json'), JSON.stringify({
    schemaVersion: 2,
    manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...m, annotations: { 'org.opencontainers.image.ref.name': TAG } }],
  }));
  const result: GeneratedImage = {
    spec, layoutDir, tag: TAG, manifestDigest: m.digest,
    layers: layers.map((l) => ({ digest: l.digest, size: l.size, mediaType: l.mediaType, file: join(layoutDir, 'blobs', 'sha256', l.hex) })),
    compressedBytes: layers.reduce((a, l) => a + l.size, 0),
    expandedBytes: plan.files.reduce((a, f) => a + f.size, 0),
    entries,
  };
  writeFileSync(join(work, 'generated.json'), JSON.stringify(result, null, 1));
  rmSync(layoutDir, { recursive: true, force: true });
  renameSync(work, layoutDir);
  say(`generated ${spec.name}: ${spec.layers} layers, ${(result.compressedBytes / MiB).toFixed(0)} MiB compressed, ${(result.expandedBytes / MiB).toFixed(0)} MiB expanded, ${((Date.now() - started) / 1000).toFixed(1)} s`);
  return result;
}
