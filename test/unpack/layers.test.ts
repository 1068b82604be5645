import { chmodSync, existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { unpackLayers } from '../../src/unpack/index.ts';
import { readXattrs } from '../../src/xattr.ts';
import { TarBuilder } from '../helpers/tar-builder.ts';
import { compareTrees } from '../helpers/tree-compare.ts';
import { GZIP, TAR, ZSTD, defaultLimits, options, sandbox, tarLayer, type Sandbox } from './util.ts';

const CAP = Buffer.from('0100000200200000000000000000000000000000', 'hex'); // cap_net_bind_service=ep
const BINARY = Buffer.from([0x00, 0xff, 0xfe, 0x0a, 0x3d, 0x20, 0xc3, 0x28, 0x00, 0x80]); // NUL, bad UTF-8, '\n', '=', ' '

let sb: Sandbox;
beforeEach(() => { sb = sandbox(); });
afterEach(() => { expect(sb.canaryIntact()).toBe(true); sb.cleanup(); });

describe('unpackLayers', () => {
  it.each([TAR, GZIP, ZSTD])('writes files, dirs and symlinks with their metadata (%s)', async (mt) => {
    const tar = new TarBuilder()
      .dir('usr', { mode: 0o755, mtime: 1_600_000_000 })
      .dir('usr/bin', { mode: 0o755, mtime: 1_600_000_001 })
      .file('usr/bin/su', 'suid', { mode: 0o4755, uid: 0, gid: 0, mtime: 1_600_000_002 })
      .file('usr/bin/wall', 'sgid', { mode: 0o2755, uid: 1000, gid: 5, mtime: 1_600_000_003 })
      .dir('tmp', { mode: 0o1777 })
      .symlink('usr/bin/sh', 'bash', { uid: 12, gid: 13, mtime: 1_600_000_004 })
      .file('usr/bin/empty', '')
      .end();
    const s = await unpackLayers(sb.dest, [tarLayer(tar, mt)], options());
    expect(s).toMatchObject({ layers: 1, entries: 7, files: 3, dirs: 3, symlinks: 1, expandedBytes: 8 });
    const su = statSync(join(sb.dest, 'usr/bin/su'));
    expect(su.mode & 0o7777).toBe(0o4755);
    expect(su.mtimeMs).toBe(1_600_000_002_000);
    const wall = statSync(join(sb.dest, 'usr/bin/wall'));
    expect([wall.mode & 0o7777, wall.uid, wall.gid]).toEqual([0o2755, 1000, 5]);
    expect(statSync(join(sb.dest, 'tmp')).mode & 0o7777).toBe(0o1777);
    const sh = lstatSync(join(sb.dest, 'usr/bin/sh'));
    expect([sh.isSymbolicLink(), readlinkSync(join(sb.dest, 'usr/bin/sh')), sh.uid, sh.gid, sh.mtimeMs]).toEqual([true, 'bash', 12, 13, 1_600_000_004_000]);
    // Directory mtimes are set after their contents were written.
    expect(statSync(join(sb.dest, 'usr/bin')).mtimeMs).toBe(1_600_000_001_000);
    expect(statSync(join(sb.dest, 'usr')).mtimeMs).toBe(1_600_000_000_000);
  });

  it('keeps binary xattrs byte for byte, security.capability included, after chown/chmod', async () => {
    const tar = new TarBuilder()
      .file('ping', 'x', { mode: 0o755, uid: 0, gid: 0, xattrs: { 'security.capability': CAP, 'user.bin': BINARY, 'user.empty': '' } })
      .dir('d', { xattrs: { 'user.d': BINARY } })
      .end();
    await unpackLayers(sb.dest, [tarLayer(tar, GZIP)], options());
    const xs = readXattrs(join(sb.dest, 'ping'));
    expect(xs.get('security.capability')?.equals(CAP)).toBe(true);
    expect(xs.get('user.bin')?.equals(BINARY)).toBe(true);
    expect(xs.get('user.empty')?.length).toBe(0);
    expect(readXattrs(join(sb.dest, 'd')).get('user.d')?.equals(BINARY)).toBe(true);
  });

  it('applies whiteouts and opaque directories across layers, sparing same-layer entries', async () => {
    const l1 = new TarBuilder().dir('a').file('a/keep', '1').file('a/gone', '1').dir('o').file('o/lower', '1').dir('o/sub').file('o/sub/deep', '1').file('top', '1').end();
    const l2 = new TarBuilder().whiteout('a/gone').opaque('o').file('o/new', '2').end();
    const l3 = new TarBuilder().file('o/sub2', '3').whiteout('top').file('samelayer', '3').whiteout('samelayer').end();
    const l4 = new TarBuilder().opaque('a').file('a/only', '4').whiteout('missing/nothing').end();
    const s = await unpackLayers(sb.dest, [tarLayer(l1, GZIP), tarLayer(l2, ZSTD), tarLayer(l3), tarLayer(l4, GZIP)], options());
    expect(existsSync(join(sb.dest, 'a/gone'))).toBe(false);
    expect(existsSync(join(sb.dest, 'a/keep'))).toBe(false); // opaque in layer 4
    expect(readFileSync(join(sb.dest, 'a/only'), 'utf8')).toBe('4');
    expect(existsSync(join(sb.dest, 'o/lower'))).toBe(false);
    expect(existsSync(join(sb.dest, 'o/sub'))).toBe(false);
    expect(readFileSync(join(sb.dest, 'o/new'), 'utf8')).toBe('2');
    expect(readFileSync(join(sb.dest, 'o/sub2'), 'utf8')).toBe('3');
    expect(existsSync(join(sb.dest, 'top'))).toBe(false);
    expect(readFileSync(join(sb.dest, 'samelayer'), 'utf8')).toBe('3');
    expect(s.whiteouts).toBe(6);
    // No whiteout file ever lands in the tree.
    const all = readFileSyncTree(sb.dest);
    expect(all.filter((p) => p.includes('.wh.'))).toEqual([]);
  });

  it('hardlinks to lower layers and to zero-length files share the inode; replacing one name does not touch the other', async () => {
    const l1 = new TarBuilder().file('lib/a', 'data', { mode: 0o4711 }).file('lib/zero', '').end();
    const l2 = new TarBuilder().hardlink('bin/a', 'lib/a').hardlink('bin/zero', '/lib/zero').hardlink('bin/a2', './bin/a').end();
    const l3 = new TarBuilder().file('lib/a', 'new').end();
    const s = await unpackLayers(sb.dest, [tarLayer(l1), tarLayer(l2, GZIP), tarLayer(l3)], options());
    expect(s.hardlinks).toBe(3);
    const a = statSync(join(sb.dest, 'bin/a'));
    expect(a.ino).toBe(statSync(join(sb.dest, 'bin/a2')).ino);
    expect(a.nlink).toBe(2);
    expect(a.mode & 0o7777).toBe(0o4711);
    expect(readFileSync(join(sb.dest, 'bin/a'), 'utf8')).toBe('data');
    expect(readFileSync(join(sb.dest, 'lib/a'), 'utf8')).toBe('new');
    expect(statSync(join(sb.dest, 'bin/zero')).ino).toBe(statSync(join(sb.dest, 'lib/zero')).ino);
  });

  it('replaces entries across types like a container runtime', async () => {
    const l1 = new TarBuilder().file('f2d', 'x').dir('d2f').file('d2f/child', 'x').file('f2l', 'x').symlink('l2f', 'target').dir('l2d-target').symlink('l2d', 'l2d-target').dir('keep', { mode: 0o700 }).file('keep/inner', 'x').end();
    const l2 = new TarBuilder().dir('f2d').file('f2d/in', 'y').file('d2f', 'y').symlink('f2l', 'elsewhere').file('l2f', 'y').dir('l2d').file('l2d/in', 'y').dir('keep', { mode: 0o755 }).end();
    await unpackLayers(sb.dest, [tarLayer(l1), tarLayer(l2)], options());
    expect(readFileSync(join(sb.dest, 'f2d/in'), 'utf8')).toBe('y');
    expect(lstatSync(join(sb.dest, 'd2f')).isFile()).toBe(true);
    expect(readlinkSync(join(sb.dest, 'f2l'))).toBe('elsewhere');
    expect(lstatSync(join(sb.dest, 'l2f')).isFile()).toBe(true);
    expect(lstatSync(join(sb.dest, 'l2d')).isDirectory()).toBe(true);
    expect(existsSync(join(sb.dest, 'l2d-target/in'))).toBe(false);
    expect(statSync(join(sb.dest, 'keep')).mode & 0o7777).toBe(0o755);
    expect(readFileSync(join(sb.dest, 'keep/inner'), 'utf8')).toBe('x');
  });

  it('makes FIFOs, skips devices with a count unless allowed, and creates them as root when allowed', async () => {
    const tar = new TarBuilder().add({ name: 'p', type: 'fifo', mode: 0o640 }).add({ name: 'dev/null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3 }).add({ name: 'dev/loop0', type: 'block', mode: 0o660, devmajor: 7, devminor: 0 }).end();
    const s = await unpackLayers(sb.dest, [tarLayer(tar)], options());
    expect(lstatSync(join(sb.dest, 'p')).isFIFO()).toBe(true);
    expect(statSync(join(sb.dest, 'p')).mode & 0o7777).toBe(0o640);
    expect(s.devicesSkipped).toBe(2);
    expect(existsSync(join(sb.dest, 'dev/null'))).toBe(false);
    if (process.getuid?.() === 0) {
      const dest2 = join(sb.base, 'dest2');
      const s2 = await unpackLayers(dest2, [tarLayer(tar)], options({ allowDevices: true }));
      expect(s2.devicesSkipped).toBe(0);
      const st = lstatSync(join(dest2, 'dev/null'));
      expect([st.isCharacterDevice(), st.rdev, st.mode & 0o7777]).toEqual([true, (1 << 8) | 3, 0o666]);
      expect(lstatSync(join(dest2, 'dev/loop0')).isBlockDevice()).toBe(true);
    }
  });

  it('handles odd names: spaces, newlines, UTF-8, 255-byte components, 4 KiB paths, GNU long names', async () => {
    const long255 = 'n'.repeat(255);
    const deep = Array.from({ length: 16 }, (_, i) => `${String(i).padStart(2, '0')}${'d'.repeat(250)}`).join('/'); // 16*253-1 = 4047 bytes
    const tar = new TarBuilder()
      .file('with space', '1').file('new\nline', '2').file('ünï/ℂödé ✓', '3').file(long255, '4')
      .file(`${deep}/f`, '5').file(`gnu/${long255}/${long255}`, '6', { gnuLong: true })
      .hardlink(`gnu/link-${'l'.repeat(200)}`, `gnu/${long255}/${long255}`, { gnuLong: true })
      .end();
    await unpackLayers(sb.dest, [tarLayer(tar, ZSTD)], options());
    expect(readFileSync(join(sb.dest, 'with space'), 'utf8')).toBe('1');
    expect(readFileSync(join(sb.dest, 'new\nline'), 'utf8')).toBe('2');
    expect(readFileSync(join(sb.dest, 'ünï/ℂödé ✓'), 'utf8')).toBe('3');
    expect(readFileSync(join(sb.dest, long255), 'utf8')).toBe('4');
    expect(readFileSync(join(sb.dest, deep, 'f'), 'utf8')).toBe('5');
    expect(readFileSync(join(sb.dest, `gnu/link-${'l'.repeat(200)}`), 'utf8')).toBe('6');
  });

  it('unpacks an ostree-native layout and can drop the repo without losing data', async () => {
    const obj = 'sysroot/ostree/repo/objects/ab/cdef0123.file';
    const tar = new TarBuilder().dir('sysroot').dir('sysroot/ostree').dir('sysroot/ostree/repo').dir('sysroot/ostree/repo/objects').dir('sysroot/ostree/repo/objects/ab')
      .file(obj, 'binary', { mode: 0o755 }).symlink('ostree', 'sysroot/ostree').dir('usr').dir('usr/bin').hardlink('usr/bin/tool', obj).file('usr/bin/zero', '').end();
    await unpackLayers(sb.dest, [tarLayer(tar, GZIP)], options({ keepSysroot: false }));
    expect(existsSync(join(sb.dest, 'sysroot/ostree'))).toBe(false);
    expect(lstatSync(join(sb.dest, 'sysroot')).isDirectory()).toBe(true);
    expect(readFileSync(join(sb.dest, 'usr/bin/tool'), 'utf8')).toBe('binary');
    expect(statSync(join(sb.dest, 'usr/bin/tool')).nlink).toBe(1);
    // keepSysroot keeps both names of the object.
    const dest2 = join(sb.base, 'dest2');
    await unpackLayers(dest2, [tarLayer(tar, GZIP)], options({ keepSysroot: true }));
    expect(statSync(join(dest2, 'usr/bin/tool')).nlink).toBe(2);
  });

  it('reports progress and accepts an empty layer', async () => {
    const seen: number[] = [];
    const s = await unpackLayers(sb.dest, [tarLayer(Buffer.alloc(0)), tarLayer(new TarBuilder().end(), GZIP), tarLayer(new TarBuilder().file('a', 'b').end(), ZSTD)], options({ onProgress: (p) => seen.push(p.layer) }));
    expect(s.entries).toBe(1);
    expect(seen).toEqual([1, 2, 3]);
    writeFileSync(join(sb.dest, 'unrelated'), '');
  });
});

function readFileSyncTree(root: string): string[] {
  return readdirSync(root, { recursive: true }).map(String);
}

describe('tree-compare (the ground-truth tool itself)', () => {
  it('reports mode, content, xattr, link-group and presence differences', async () => {
    const tar = new TarBuilder().file('a', '1').file('b', '2').hardlink('c', 'b').end();
    const a = join(sb.base, 'dest-a');
    const b = join(sb.base, 'dest-b');
    await unpackLayers(a, [tarLayer(tar)], options());
    await unpackLayers(b, [tarLayer(tar)], options());
    expect(compareTrees(a, b)).toEqual([]);
    chmodSync(join(b, 'a'), 0o600);
    writeFileSync(join(b, 'b'), '3');
    writeFileSync(join(b, 'extra'), '');
    const diffs = compareTrees(a, b).join('\n');
    expect(diffs).toMatch(/"a": mode "644" != "600"/);
    expect(diffs).toMatch(/"b": sha256/);
    expect(diffs).toMatch(/"extra": only in/);
  });
});

describe('errors from the filesystem name the entry', () => {
  it('a host path over PATH_MAX is a clear unpack error', async () => {
    const deep = Array.from({ length: 17 }, () => 'q'.repeat(250)).join('/');
    const err = await unpackLayers(sb.dest, [tarLayer(new TarBuilder().file(`${deep}/f`, 'x').end())], options({ limits: defaultLimits({ maxPathLength: 8000 }) })).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/cannot write .*ENAMETOOLONG/);
  });
});
