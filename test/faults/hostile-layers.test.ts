// The hostile layer corpus: layers generated here, run through the real unpacker (unpackLayers),
// each next to a canary directory that must never change. Every case ends in a clear error (kind
// and message pinned) or the documented safe interpretation from docs/unpack.md (rooted paths,
// last component never followed, devices skipped by default), checked on disk.
//
// test/unpack/badinput.test.ts holds the unpacker's own hostile-input tests; the cases here are
// the list as one printable table, in variants those tests do not already pin.
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { afterEach, beforeEach, describe, expect } from 'vitest';
import { PivotError } from '../../src/errors.ts';
import { unpackLayers, type LayerSource, type UnpackOptions, type UnpackSummary } from '../../src/unpack/index.ts';
import { TarBuilder, tarHeader } from '../helpers/tar-builder.ts';
import { GZIP, ZSTD, bufferLayer, defaultLimits, options, sandbox, tarLayer, type Sandbox } from '../unpack/util.ts';
import { faultCase } from './table.ts';

const CAT = 'hostile-layer';
let sb: Sandbox;
beforeEach(() => { sb = sandbox(); });
afterEach(() => {
  // The canary next to the destination is the point of every case.
  expect(sb.canaryIntact()).toBe(true);
  sb.cleanup();
});

type Check = { error: string; message: RegExp; written?: { path: string; below: number } } | { ok: (dest: string, s: UnpackSummary) => void };

interface HostileCase {
  name: string;
  /** What the table says should happen. */
  expected: string;
  layers: (canary: string) => LayerSource[] | Promise<LayerSource[]>;
  opts?: Partial<UnpackOptions>;
  check: Check;
}

const tb = (): TarBuilder => new TarBuilder();
const t = (b: TarBuilder, mediaType?: string): LayerSource => tarLayer(b.end(), mediaType);
const tree = (dest: string): string[] => readdirSync(dest, { recursive: true }).map(String).sort();
const read = (dest: string, p: string): string => readFileSync(join(dest, p), 'utf8');
const deep = (n: number): string => '../'.repeat(n);

/** A tar of one `size`-byte file of zeros, streamed through `compress` without holding it. */
async function zeroBomb(size: number, compress: () => NodeJS.ReadWriteStream): Promise<Buffer> {
  const src = Readable.from((function* () {
    yield tarHeader({ name: 'bomb', size });
    const zeros = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < size / zeros.length; i++) yield zeros;
    yield Buffer.alloc(1024);
  })());
  const parts: Buffer[] = [];
  for await (const c of src.pipe(compress())) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

const GIB = 1024 ** 3;

const cases: HostileCase[] = [
  // --- traversal and absolute names: rooted -----------------------------------------------------
  {
    name: '../ traversal 12 levels up toward the canary',
    expected: 'rooted: DEST/canary/x',
    layers: () => [t(tb().file(`${deep(12)}canary/x`, 'in'))],
    check: { ok: (d) => { expect(tree(d)).toEqual(['canary', 'canary/x']); expect(read(d, 'canary/x')).toBe('in'); } },
  },
  {
    name: "absolute path naming the canary's real location",
    expected: 'rooted: DEST/<that path>/x',
    layers: (c) => [t(tb().file(`${c}/x`, 'in'))],
    check: { ok: (d) => { expect(existsSync(join(d, d.replace(/dest$/, 'canary'), 'x'))).toBe(true); } },
  },
  {
    name: 'GNU long name (L header) of 300 bytes with ../ toward the canary',
    expected: 'rooted: DEST/canary/x',
    layers: () => [t(tb().add({ name: `${deep(95)}canary/x`, data: 'in', type: 'file', gnuLong: true }))],
    check: { ok: (d) => { expect(tree(d)).toEqual(['canary', 'canary/x']); } },
  },
  {
    name: 'pax linkpath ../../canary on a symlink, then written through',
    expected: 'link kept as data; write rooted: DEST/canary/x',
    layers: () => [t(tb().add({ name: 'l', type: 'symlink', linkname: 'innocent', pax: [['linkpath', '../../canary']] }).file('l/x', 'in'))],
    check: { ok: (d) => { expect(readlinkSync(join(d, 'l'))).toBe('../../canary'); expect(read(d, 'canary/x')).toBe('in'); } },
  },
  // --- symlink escapes --------------------------------------------------------------------------
  {
    name: 'symlink to the canary by absolute path, then a/x written through it',
    expected: 'rooted: DEST/<canary path>/x',
    layers: (c) => [t(tb().symlink('a', c).file('a/x', 'in'))],
    check: { ok: (d) => { expect(read(d, join(d.replace(/dest$/, 'canary'), 'x').slice(1))).toBe('in'); } },
  },
  {
    name: 'a -> / in layer 1 (zstd), a/etc/x in layer 2 (gzip)',
    expected: 'rooted: DEST/etc/x',
    layers: () => [t(tb().symlink('a', '/'), ZSTD), t(tb().file('a/etc/x', 'in'), GZIP)],
    check: { ok: (d) => { expect(read(d, 'etc/x')).toBe('in'); expect(lstatSync(join(d, 'a')).isSymbolicLink()).toBe(true); } },
  },
  {
    name: 'chained symlinks through a directory symlink (d -> .., e -> d/d/d/..)',
    expected: 'rooted: DEST/canary/etc/x',
    layers: () => [t(tb().symlink('d', '..').symlink('e', 'd/d/d/..').symlink('f', 'e/../e')), t(tb().file('f/canary/etc/x', 'in'))],
    check: { ok: (d) => { expect(read(d, 'canary/etc/x')).toBe('in'); } },
  },
  {
    name: 'symlink loop across layers, then written through',
    expected: 'path-safety error: too many levels of symlinks',
    layers: () => [t(tb().symlink('x', 'y')), t(tb().symlink('y', 'z').symlink('z', '/x').file('x/f', '1'))],
    check: { error: 'path-safety', message: /too many levels of symlinks/ },
  },
  {
    name: 'file entry over a symlink that points at the canary file',
    expected: 'the symlink is replaced; canary untouched',
    layers: (c) => [t(tb().symlink('s', join(c, 'x'))), t(tb().file('s', 'mine'))],
    check: { ok: (d) => { expect(lstatSync(join(d, 's')).isFile()).toBe(true); expect(read(d, 's')).toBe('mine'); } },
  },
  // --- hardlinks --------------------------------------------------------------------------------
  {
    name: "hardlink to the canary file's absolute path",
    expected: 'unpack error: target does not exist in the image',
    layers: (c) => [t(tb().hardlink('h', join(c, 'x')))],
    check: { error: 'unpack', message: /does not exist in the image/ },
  },
  {
    name: 'hardlink to ../../canary/etc/x',
    expected: 'unpack error: target does not exist in the image',
    layers: () => [t(tb().hardlink('h', '../../canary/etc/x'))],
    check: { error: 'unpack', message: /does not exist in the image/ },
  },
  {
    name: 'hardlink through a directory symlink pointing outside (s -> canary, h -> s/x)',
    expected: 'unpack error: target does not exist in the image',
    layers: (c) => [t(tb().symlink('s', c)), t(tb().hardlink('h', 's/etc/x'))],
    check: { error: 'unpack', message: /does not exist in the image/ },
  },
  {
    name: 'hardlink to a symlink pointing outside, then a file written at the link name',
    expected: 'the name is replaced, the symlink and the canary stay',
    layers: (c) => [t(tb().symlink('s', join(c, 'x')).hardlink('h', 's')), t(tb().file('h', 'new'))],
    check: { ok: (d, s) => { expect(read(d, 'h')).toBe('new'); expect(lstatSync(join(d, 's')).isSymbolicLink()).toBe(true); expect(s.hardlinks).toBe(1); } },
  },
  {
    name: 'hardlink to a lower-layer file, then the link name rewritten',
    expected: 'no write through the shared inode: f keeps its bytes',
    layers: () => [t(tb().file('f', 'original').hardlink('h', 'f')), t(tb().file('h', 'replaced'))],
    check: { ok: (d) => { expect(read(d, 'f')).toBe('original'); expect(read(d, 'h')).toBe('replaced'); } },
  },
  // --- whiteouts --------------------------------------------------------------------------------
  {
    name: 'whiteout /../../canary/.wh.x',
    expected: 'rooted: removes DEST/canary/x only',
    layers: () => [t(tb().file('canary/x', 'lower').file('keep', '1')), t(tb().file('/../../canary/.wh.x'))],
    check: { ok: (d) => { expect(tree(d)).toEqual(['canary', 'keep']); } },
  },
  {
    name: 'whiteout under a symlinked parent pointing at the canary (p/.wh.x)',
    expected: 'rooted: nothing outside is removed',
    layers: (c) => [t(tb().symlink('p', c)), t(tb().file('p/.wh.x'))],
    check: { ok: (d) => { expect(lstatSync(join(d, 'p')).isSymbolicLink()).toBe(true); } },
  },
  {
    name: 'whiteout of a symlink that points at the canary',
    expected: 'the symlink goes, its target stays',
    layers: (c) => [t(tb().symlink('s', join(c, 'x')).file('k', '1')), t(tb().whiteout('s'))],
    check: { ok: (d) => { expect(tree(d)).toEqual(['k']); } },
  },
  {
    name: 'opaque whiteout at the root via a symlink to / (s/.wh..wh..opq)',
    expected: 'rooted: lower layers of DEST emptied, same layer kept',
    layers: () => [t(tb().file('old', '1').symlink('s', '/')), t(tb().file('s/.wh..wh..opq').file('new', '2'))],
    check: { ok: (d) => { expect(tree(d)).toEqual(['new']); } },
  },
  {
    name: 'opaque whiteout in a directory symlinked to the canary',
    expected: 'rooted: nothing outside is emptied',
    layers: (c) => [t(tb().symlink('o', c)), t(tb().opaque('o'))],
    check: { ok: (d) => { expect(lstatSync(join(d, 'o')).isSymbolicLink()).toBe(true); } },
  },
  {
    name: 'whiteout with an empty name (.wh.)',
    expected: 'path-safety error: names no file',
    layers: () => [t(tb().file('d/.wh.'))],
    check: { error: 'path-safety', message: /names no file/ },
  },
  // --- devices (policy: skipped unless allowDevices and root) -----------------------------------
  {
    name: 'char device /dev/mem (1,1) with default policy',
    expected: 'skipped and counted',
    layers: () => [t(tb().dir('dev').add({ name: 'dev/mem', type: 'char', devmajor: 1, devminor: 1 }).add({ name: 'dev/sda', type: 'block', devmajor: 8, devminor: 0 }))],
    check: { ok: (d, s) => { expect(s.devicesSkipped).toBe(2); expect(tree(d)).toEqual(['dev']); } },
  },
  {
    name: 'char device (1,3) at ../../canary/null with allowDevices',
    expected: 'created, rooted, inside DEST',
    opts: { allowDevices: true },
    layers: () => [t(tb().add({ name: '../../canary/null', type: 'char', devmajor: 1, devminor: 3 }))],
    check: { ok: (d) => { expect(statSync(join(d, 'canary/null')).isCharacterDevice()).toBe(process.getuid?.() === 0); } },
  },
  // --- PAX --------------------------------------------------------------------------------------
  {
    name: 'pax linkpath with a NUL byte',
    expected: 'path-safety error naming the NUL',
    layers: () => [t(tb().add({ name: 'l', type: 'symlink', linkname: 'x', pax: [['linkpath', Buffer.from('a\0/../../canary')]] }))],
    check: { error: 'path-safety', message: /NUL/ },
  },
  {
    name: 'giant pax header: 30000 small records (1.2 MB)',
    expected: 'unpack error: over the 1 MiB pax limit',
    layers: () => [t(tb().add({ name: 'a', pax: Array.from({ length: 30_000 }, (_, i): [string, string] => [`SCHILY.xattr.user.k${i}`, 'v'.repeat(20)]) }))],
    check: { error: 'unpack', message: /over the 1048576-byte limit/ },
  },
  {
    name: 'global pax header carrying path=../../canary/x',
    expected: 'rooted wherever it applies: DEST/a or DEST/canary/x',
    layers: () => [t(tb().paxHeader([['path', '../../canary/x']], true).file('a', 'x'))],
    check: { ok: (d) => { expect(['a', 'canary,canary/x']).toContain(tree(d).join(',')); } },
  },
  // --- names and lengths ------------------------------------------------------------------------
  {
    name: '4 KiB path (4097 bytes)',
    expected: 'limit error naming limits.maxPathLength',
    layers: () => [t(tb().file(`${'d/'.repeat(2048)}x`, 'x'))],
    check: { error: 'limit', message: /4097-byte path, over 4096/ },
  },
  {
    name: '255-byte path component',
    expected: 'written (the Linux NAME_MAX)',
    layers: () => [t(tb().file('c'.repeat(255), 'ok'))],
    check: { ok: (d) => { expect(read(d, 'c'.repeat(255))).toBe('ok'); } },
  },
  {
    name: '256-byte path component',
    expected: 'unpack error: ENAMETOOLONG naming the entry',
    layers: () => [t(tb().file('c'.repeat(256), 'no'))],
    check: { error: 'unpack', message: /ENAMETOOLONG/ },
  },
  // --- duplicates and type changes --------------------------------------------------------------
  {
    name: 'duplicate entries: file, then dir, then symlink at one name',
    expected: 'last one wins (symlink)',
    layers: () => [t(tb().file('n', 'f').dir('n').symlink('n', '/etc'))],
    check: { ok: (d) => { expect(readlinkSync(join(d, 'n'))).toBe('/etc'); } },
  },
  {
    name: 'directory in layer 1 replaced by a file in layer 2, then written into',
    expected: 'path-safety error: needs "d" to be a directory',
    layers: () => [t(tb().dir('d').file('d/old', '1')), t(tb().file('d', 'file now').file('d/x', 'into'))],
    check: { error: 'path-safety', message: /needs "d" to be a directory/ },
  },
  // --- broken streams ---------------------------------------------------------------------------
  {
    name: 'trailing garbage after the gzip stream',
    expected: 'unpack error (corrupt or trailing garbage)',
    layers: () => [bufferLayer(Buffer.concat([zlib.gzipSync(tb().file('a', '1').end()), Buffer.from('GARBAGE-GARBAGE')]), GZIP)],
    check: { error: 'unpack', message: /corrupt|garbage/ },
  },
  {
    name: 'gzip truncated inside its 10-byte header',
    expected: 'unpack error: corrupt or truncated',
    layers: () => [bufferLayer(zlib.gzipSync(tb().file('a', '1').end()).subarray(0, 6), GZIP)],
    check: { error: 'unpack', message: /corrupt|truncated|none/ },
  },
  {
    name: 'zstd layer labelled gzip',
    expected: 'unpack error: labelled gzip but its bytes are zstd',
    layers: () => [bufferLayer(zlib.zstdCompressSync(tb().file('a', '1').end()), GZIP)],
    check: { error: 'unpack', message: /labelled gzip but its bytes are/ },
  },
  {
    name: 'header size larger than the data (lying size)',
    expected: 'unpack error: truncated',
    layers: () => [tarLayer(Buffer.concat([tarHeader({ name: 'a', size: 100_000 }), Buffer.alloc(1024)]))],
    check: { error: 'unpack', message: /truncated|corrupt/ },
  },
  {
    name: 'base-256 size field declaring 1 TiB',
    expected: 'limit error before a byte is written',
    layers: () => [tarLayer(Buffer.concat([tarHeader({ name: 'huge', size: 1024 ** 4 }), Buffer.alloc(4096)]))],
    check: { error: 'limit', message: /expands beyond/ },
  },
  {
    name: 'empty layers: zero bytes plain, and only end-of-archive blocks gzip',
    expected: 'nothing written, no error',
    layers: () => [bufferLayer(Buffer.alloc(0)), bufferLayer(zlib.gzipSync(Buffer.alloc(1024)), GZIP)],
    check: { ok: (d, s) => { expect(tree(d)).toEqual([]); expect(s.entries).toBe(0); } },
  },
  {
    name: 'decompression bomb: 1 GiB of zeros in ~1 MiB of gzip',
    expected: 'limit error limits.maxExpansionRatio; < 256 MiB written',
    layers: async () => [bufferLayer(await zeroBomb(GIB, () => zlib.createGzip({ level: 9 })), GZIP)],
    check: { error: 'limit', message: /expands more than 100x/, written: { path: 'bomb', below: 256 * 1024 ** 2 } },
  },
  {
    name: 'decompression bomb: 1 GiB of zeros in zstd (~40 KiB)',
    expected: 'limit error limits.maxExpansionRatio',
    layers: async () => [bufferLayer(await zeroBomb(GIB, () => zlib.createZstdCompress()), ZSTD)],
    check: { error: 'limit', message: /expands more than 100x/ },
  },
  {
    name: 'entry-count bomb: 5000 empty files against maxEntries 1000',
    expected: 'limit error naming limits.maxEntries',
    opts: { limits: defaultLimits({ maxEntries: 1000 }) },
    layers: () => {
      const b = tb();
      for (let i = 0; i < 5000; i++) b.file(`f${i}`);
      return [t(b)];
    },
    check: { error: 'limit', message: /more than 1000 entries/ },
  },
];

describe('hostile layer corpus', () => {
  for (const c of cases) {
    faultCase(CAT, c.name, c.expected, async () => {
      const layers = await c.layers(sb.canary);
      const result = await unpackLayers(sb.dest, layers, options(c.opts ?? {})).then((s) => s, (e: unknown) => e);
      const check = c.check;
      if ('error' in check) {
        expect(result, 'expected an error').toBeInstanceOf(PivotError);
        const pe = result as PivotError;
        expect(pe.kind).toBe(check.error);
        expect(pe.message).toMatch(check.message);
        expect(pe.oneLine()).not.toMatch(/\n/);
        if (check.written) expect(statSync(join(sb.dest, check.written.path)).size).toBeLessThan(check.written.below);
        expect(sb.canaryIntact()).toBe(true);
        return `${pe.kind} (exit ${pe.exitCode}): ${pe.message.replace(/layer \d+\/\d+ sha256:[0-9a-f]{64}:? ?/, '').slice(0, 90)}`;
      }
      if (result instanceof Error) throw result;
      check.ok(sb.dest, result as UnpackSummary);
      expect(sb.canaryIntact()).toBe(true);
      const s = result as UnpackSummary;
      return `ok: ${s.entries} entries (${s.files} files, ${s.symlinks} symlinks, ${s.hardlinks} hardlinks, ${s.whiteouts} whiteouts, ${s.devicesSkipped} devices skipped), canary intact`;
    });
  }
});
