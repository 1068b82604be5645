// Hostile and broken layers: each gets a clear error (or a documented rooted interpretation, see
// docs/unpack.md), and the canary directory next to the destination never changes.
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PivotError } from '../../src/errors.ts';
import { resetFailpoints } from '../../src/failpoints.ts';
import { unpackLayers, type LayerSource } from '../../src/unpack/index.ts';
import { TarBuilder, paxRecord, tarHeader } from '../helpers/tar-builder.ts';
import { GZIP, TAR, ZSTD, bufferLayer, defaultLimits, options, sandbox, tarLayer, type Sandbox } from './util.ts';

let sb: Sandbox;
beforeEach(() => { sb = sandbox(); });
afterEach(() => {
  expect(sb.canaryIntact()).toBe(true);
  sb.cleanup();
});

async function fails(layers: LayerSource[], kind: string, message: RegExp, over = {}): Promise<PivotError> {
  const err = await unpackLayers(sb.dest, layers, options(over)).then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(PivotError);
  const pe = err as PivotError;
  expect(pe.kind).toBe(kind);
  expect(pe.message).toMatch(message);
  expect(pe.oneLine()).not.toMatch(/\n/);
  return pe;
}

const tree = (): string[] => readdirSync(sb.dest, { recursive: true }).map(String).sort();

describe('broken streams', () => {
  const good = new TarBuilder().file('a', 'x'.repeat(5000)).file('b', 'y').end();

  it('a truncated uncompressed stream', async () => {
    await fails([tarLayer(good.subarray(0, 3000))], 'unpack', /truncated/);
  });
  it('a truncated gzip stream', async () => {
    const gz = zlib.gzipSync(good);
    await fails([bufferLayer(gz.subarray(0, gz.length - 20), GZIP)], 'unpack', /corrupt or truncated/);
  });
  it('corrupt gzip data', async () => {
    const gz = Buffer.from(zlib.gzipSync(good));
    for (let i = 20; i < 40; i++) gz[i] = (gz[i] as number) ^ 0x55;
    await fails([bufferLayer(gz, GZIP)], 'unpack', /corrupt/);
  });
  it('truncated and corrupt zstd streams', async () => {
    const z = zlib.zstdCompressSync(good);
    await fails([bufferLayer(z.subarray(0, z.length - 10), ZSTD)], 'unpack', /corrupt or truncated/);
    const bad = Buffer.from(z);
    for (let i = 10; i < 30; i++) bad[i] = (bad[i] as number) ^ 0x55;
    await fails([bufferLayer(bad, ZSTD)], 'unpack', /corrupt or truncated \(Data corruption detected\)/);
  });
  it('a corrupt tar header checksum', async () => {
    const tar = new TarBuilder().add({ name: 'a', data: 'x', checksum: 1 }).end();
    await fails([tarLayer(tar)], 'unpack', /tar stream is corrupt/);
  });
  it('an unknown media type', async () => {
    await fails([bufferLayer(good, 'application/vnd.oci.image.layer.v1.tar+bzip2')], 'unpack', /unsupported layer media type/);
  });
  it('a plain tar labelled gzip', async () => {
    await fails([bufferLayer(good, GZIP)], 'unpack', /labelled gzip but its bytes are none/);
  });
  it('a gzip layer labelled zstd', async () => {
    await fails([bufferLayer(zlib.gzipSync(good), ZSTD)], 'unpack', /labelled zstd but its bytes are gzip/);
  });
  it('an empty blob labelled gzip (an empty plain layer is fine)', async () => {
    await fails([bufferLayer(Buffer.alloc(0), GZIP)], 'unpack', /empty but labelled gzip/);
  });
  it('trailing garbage after the end of the archive (trailing zero blocks are fine)', async () => {
    await unpackLayers(sb.dest, [tarLayer(new TarBuilder().file('z', '1').end(20))], options());
    const garbage = Buffer.concat([good, Buffer.alloc(512, 0x41)]);
    await fails([tarLayer(garbage)], 'unpack', /trailing garbage/);
  });
  it('an unsupported entry type (GNU sparse) and a non-UTF-8 name', async () => {
    await fails([tarLayer(new TarBuilder().add({ name: 's', type: 'S' }).end())], 'unpack', /unsupported tar type/);
    await fails([tarLayer(new TarBuilder().file(Buffer.from([0x61, 0xff, 0x62]), 'x').end())], 'unpack', /not valid UTF-8/);
  });
});

describe('lying and hostile PAX headers', () => {
  it('a pax size larger than the data is a truncation error', async () => {
    const tar = new TarBuilder().add({ name: 'a', data: 'short', pax: [['size', '100000']] }).file('b', 'x').end();
    await fails([tarLayer(tar)], 'unpack', /corrupt|truncated/);
  });
  it('a pax record length that overruns the header', async () => {
    const tar = new TarBuilder().raw(tarHeader({ name: 'P', type: 'x', size: 20 })).raw(Buffer.concat([Buffer.from('99 path=evil\n'), Buffer.alloc(7), Buffer.alloc(492)])).file('a', 'x').end();
    await fails([tarLayer(tar)], 'unpack', /malformed PAX header/);
  });
  it('a pax path that differs from the ustar name wins, and stays rooted', async () => {
    const tar = new TarBuilder().add({ name: 'innocent', data: 'x', pax: [['path', '../../canary/x']] }).end();
    await unpackLayers(sb.dest, [tarLayer(tar)], options());
    expect(tree()).toEqual(['canary', 'canary/x']);
    expect(existsSync(join(sb.dest, 'innocent'))).toBe(false);
  });
  it('a pax path with a NUL byte', async () => {
    const tar = new TarBuilder().add({ name: 'a', data: 'x', pax: [['path', Buffer.from('etc\0/../../x')]] }).end();
    await fails([tarLayer(tar)], 'path-safety', /NUL/);
    expect(tree()).toEqual([]);
  });
  it('a giant pax header', async () => {
    await fails([tarLayer(new TarBuilder().add({ name: 'a', pax: [['user.big', Buffer.alloc(2 * 1024 * 1024, 1)]] }).end())], 'unpack', /over the 1048576-byte limit/);
    await fails([tarLayer(new TarBuilder().add({ name: 'a', pax: [['user.big', Buffer.alloc(5 * 1024 * 1024, 1)]] }).end())], 'unpack', /Header exceeds max size/);
  });
  it('a global pax header applies to later entries', async () => {
    const tar = new TarBuilder().paxHeader([['SCHILY.xattr.user.g', Buffer.from([0, 1, 2])]], true).file('a', 'x').end();
    await unpackLayers(sb.dest, [tarLayer(tar)], options());
    expect(readFileSync(join(sb.dest, 'a'), 'utf8')).toBe('x');
    expect(paxRecord('k', 'v').toString()).toBe('6 k=v\n');
  });
});

describe('path escapes are rooted', () => {
  it('symlink-then-write-through: a -> / then a/etc/x lands in DEST/etc/x', async () => {
    const tar = new TarBuilder().symlink('a', '/').file('a/etc/x', 'inside').symlink('b', '../../canary').file('b/x', 'inside2').end();
    await unpackLayers(sb.dest, [tarLayer(tar)], options());
    expect(readFileSync(join(sb.dest, 'etc/x'), 'utf8')).toBe('inside');
    expect(readFileSync(join(sb.dest, 'canary/x'), 'utf8')).toBe('inside2');
  });
  it('the same escape across layers, and via chained symlinks', async () => {
    const l1 = new TarBuilder().symlink('l1', 'l2').symlink('l2', 'sub/../l3').symlink('l3', '/../../..').dir('sub').end();
    const l2 = new TarBuilder().file('l1/canary/etc/x', 'chained').end();
    await unpackLayers(sb.dest, [tarLayer(l1), tarLayer(l2, GZIP)], options());
    expect(readFileSync(join(sb.dest, 'canary/etc/x'), 'utf8')).toBe('chained');
  });
  it('a symlink loop is an error', async () => {
    const tar = new TarBuilder().symlink('x', 'y').symlink('y', 'x').file('x/f', '1').end();
    await fails([tarLayer(tar)], 'path-safety', /too many levels of symlinks/);
  });
  it('a file entry over a symlink replaces the symlink, never writes through it', async () => {
    const tar = new TarBuilder().symlink('a', '../canary/x').file('a', 'mine').end();
    await unpackLayers(sb.dest, [tarLayer(tar)], options());
    expect(lstatSync(join(sb.dest, 'a')).isFile()).toBe(true);
  });
  it('absolute and .. names are taken relative to the root', async () => {
    const tar = new TarBuilder().file('/abs', '1').file('../../../up', '2').file('./a/../../b', '3').end();
    await unpackLayers(sb.dest, [tarLayer(tar)], options());
    expect(tree()).toEqual(['abs', 'b', 'up']);
  });
  it('a hardlink to an absolute path outside resolves inside, where it does not exist', async () => {
    const before = statSync('/etc/passwd').nlink;
    await fails([tarLayer(new TarBuilder().hardlink('h', '/etc/passwd').end())], 'unpack', /does not exist in the image/);
    await fails([tarLayer(new TarBuilder().hardlink('h', '../canary/x').end())], 'unpack', /does not exist in the image/);
    await fails([tarLayer(new TarBuilder().symlink('s', `${sb.canary}`).hardlink('h', 's/x').end())], 'unpack', /does not exist in the image/);
    expect(statSync('/etc/passwd').nlink).toBe(before);
  });
  it('a hardlink to a symlink pointing outside links the symlink itself', async () => {
    const tar = new TarBuilder().symlink('s', join(sb.canary, 'x')).hardlink('h', 's').end();
    await unpackLayers(sb.dest, [tarLayer(tar)], options());
    const h = lstatSync(join(sb.dest, 'h'));
    expect(h.isSymbolicLink()).toBe(true);
    expect(h.ino).toBe(lstatSync(join(sb.dest, 's')).ino);
    expect(readlinkSync(join(sb.dest, 'h'))).toBe(join(sb.canary, 'x'));
  });
  it('a hardlink to a directory is refused', async () => {
    await fails([tarLayer(new TarBuilder().dir('d').hardlink('h', 'd').end())], 'path-safety', /points to directory/);
  });
  it('whiteouts of ../x and /x delete DEST/x, nothing outside', async () => {
    for (const wh of ['../.wh.x', '/.wh.x', 'a/../../.wh.x']) {
      const l1 = new TarBuilder().file('x', 'lower').end();
      await unpackLayers(sb.dest, [tarLayer(l1), tarLayer(new TarBuilder().file(wh, '').end())], options());
      expect(existsSync(join(sb.dest, 'x'))).toBe(false);
    }
    await fails([tarLayer(new TarBuilder().file('a/.wh...', '').end())], 'path-safety', /names no file/);
  });
  it('an opaque whiteout at the root empties only the lower layers of DEST', async () => {
    const l1 = new TarBuilder().file('old', '1').dir('d').file('d/old', '1').end();
    const l2 = new TarBuilder().file('new', '2').file('/.wh..wh..opq', '').end();
    await unpackLayers(sb.dest, [tarLayer(l1), tarLayer(l2)], options());
    expect(tree()).toEqual(['new']);
  });
  it('an entry that would replace the root itself', async () => {
    await fails([tarLayer(new TarBuilder().file('./', 'x').end())], 'path-safety', /replace the destination root/);
    await fails([tarLayer(new TarBuilder().symlink('..', '/etc').end())], 'path-safety', /replace the destination root/);
  });
  it('duplicate entries: the last one wins', async () => {
    const tar = new TarBuilder().file('f', 'first').file('f', 'second').dir('d', { mode: 0o700 }).dir('d', { mode: 0o750 }).end();
    await unpackLayers(sb.dest, [tarLayer(tar)], options());
    expect(readFileSync(join(sb.dest, 'f'), 'utf8')).toBe('second');
    expect(statSync(join(sb.dest, 'd')).mode & 0o777).toBe(0o750);
  });
  it('a directory replaced by a file, then written into', async () => {
    const tar = new TarBuilder().dir('d').file('d', 'now a file').file('d/x', 'into').end();
    await fails([tarLayer(tar)], 'path-safety', /needs "d" to be a directory/);
    expect(readFileSync(join(sb.dest, 'd'), 'utf8')).toBe('now a file');
  });
});

describe('limits', () => {
  it('entries, path length and expanded bytes', async () => {
    const tar = new TarBuilder().file('a', '12345').file('b', '12345').file('c', '1').end();
    await fails([tarLayer(tar)], 'limit', /more than 2 entries/, { limits: defaultLimits({ maxEntries: 2 }) });
    await fails([tarLayer(new TarBuilder().file('x'.repeat(50), '').end())], 'limit', /50-byte path, over 40/, { limits: defaultLimits({ maxPathLength: 40 }) });
    await fails([tarLayer(new TarBuilder().hardlink('h', 'y'.repeat(50)).end())], 'limit', /50-byte path/, { limits: defaultLimits({ maxPathLength: 40 }) });
    await fails([tarLayer(tar)], 'limit', /expands beyond 10 bytes at "c"/, { limits: defaultLimits({ maxExpandedBytes: 10 }) });
  });

  it('a decompression bomb (1 GiB of zeros in ~1 MiB of gzip) stops on the ratio without writing 1 GiB', async () => {
    const gib = 1024 ** 3;
    const tarStream = Readable.from((function* () {
      yield tarHeader({ name: 'bomb', size: gib });
      const zeros = Buffer.alloc(1024 * 1024);
      for (let i = 0; i < 1024; i++) yield zeros;
      yield Buffer.alloc(1024);
    })());
    const parts: Buffer[] = [];
    for await (const c of tarStream.pipe(zlib.createGzip({ level: 1 }))) parts.push(c as Buffer);
    const bomb = Buffer.concat(parts);
    expect(bomb.length).toBeLessThan(8 * 1024 * 1024);
    const err = await fails([bufferLayer(bomb, GZIP)], 'limit', /expands more than 100x/);
    expect(err.field).toBe('limits.maxExpansionRatio');
    expect(statSync(join(sb.dest, 'bomb')).size).toBeLessThan(256 * 1024 * 1024);
    // With a total limit below the declared size, nothing is written at all.
    await fails([bufferLayer(bomb, GZIP)], 'limit', /expands beyond/, { limits: defaultLimits({ maxExpandedBytes: 100 * 1024 * 1024 }) });
  });
});

describe('failpoints', () => {
  it('unpack.entry, unpack.layer and unpack.finish stop the unpack', async () => {
    const tar = new TarBuilder().file('a', '1').file('b', '2').file('c', '3').end();
    try {
      for (const [spec, count] of [['unpack.entry:error@2', 1], ['unpack.layer:error@2', 3], ['unpack.finish:error', 6]] as const) {
        process.env.NODE_IMAGE_PIVOT_FAILPOINTS = spec;
        resetFailpoints();
        const err = await unpackLayers(sb.dest, [tarLayer(tar), tarLayer(tar, GZIP)], options()).catch((e: unknown) => e);
        expect((err as PivotError).message).toMatch(/failpoint/);
        expect(tree().length).toBe(Math.min(count, 3));
      }
    } finally {
      delete process.env.NODE_IMAGE_PIVOT_FAILPOINTS;
      resetFailpoints();
    }
  });
});

void TAR;
