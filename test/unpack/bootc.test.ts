// bootc's import rules as pure functions, the a(ayay) reader, and bad ostree-native input: each
// bad case is a typed error naming the path, exit 4 or 5, with nothing outside the destination.
import { existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PivotError } from '../../src/errors.ts';
import { bootcImageOf, bootcPath, MAX_SHARED_XATTRS_BYTES, MAX_XATTRS_OBJECT, repoObjectOf, XattrLinks, type BootcImage } from '../../src/unpack/bootc.ts';
import { declareFactoryVar, factoryVarLines, FACTORY_VAR_TMPFILES } from '../../src/unpack/factory-var.ts';
import { offsetWidth, parseXattrList, GVariantError } from '../../src/unpack/gvariant.ts';
import { unpackLayers } from '../../src/unpack/index.ts';
import { formatPullSummary, type PullToDestSummary } from '../../src/pull.ts';
import { encodeXattrList, objectPath } from '../helpers/ostree-image.ts';
import { TarBuilder } from '../helpers/tar-builder.ts';
import { thrown } from '../helpers/thrown.ts';
import { options, sandbox, tarLayer, type Sandbox } from './util.ts';

const CSUM = 'ab'.repeat(32);
const config = (labels: Record<string, string>, diffIds: string[] = []): Buffer =>
  Buffer.from(JSON.stringify({ config: { Labels: labels }, rootfs: { type: 'layers', diff_ids: diffIds } }));

describe('a(ayay) GVariant', () => {
  it('round-trips names and binary values, with 1- and 2-byte framing offsets', () => {
    const small = new Map([['security.capability', Buffer.from([1, 0, 0, 2])], ['user.a', Buffer.from([0, 0xff, 0x0a])]]);
    expect(parseXattrList(encodeXattrList(small))).toEqual(small);
    const big = new Map([['user.big', Buffer.alloc(300, 7)], ['user.z', Buffer.from('z')]]);
    const enc = encodeXattrList(big);
    expect(offsetWidth(enc.length)).toBe(2);
    expect(parseXattrList(enc)).toEqual(big);
    expect(parseXattrList(Buffer.alloc(0))).toEqual(new Map());
  });
  it('matches the bytes ostree itself writes for one xattr', () => {
    // ostree's serialisation of [('user.foo\0', 'bar')]: key, value, tuple offset 9, array offset 13.
    const ostree = Buffer.concat([Buffer.from('user.foo\0bar'), Buffer.from([9, 13])]);
    expect(encodeXattrList(new Map([['user.foo', Buffer.from('bar')]]))).toEqual(ostree);
    expect(parseXattrList(ostree)).toEqual(new Map([['user.foo', Buffer.from('bar')]]));
  });
  it.each([
    ['an offset past the end', Buffer.from([0x05])],
    ['a name without its NUL', Buffer.concat([Buffer.from('user.foobar'), Buffer.from([8, 12])])],
    ['a tuple offset past the value', Buffer.concat([Buffer.from('user.foo\0bar'), Buffer.from([40, 13])])],
    ['a table that is not whole offsets', Buffer.from([1, 2, 0])],
    ['a repeated name', Buffer.concat([Buffer.from('u.a\0x'), Buffer.from([4]), Buffer.from('u.a\0y'), Buffer.from([4, 6, 12])])],
  ])('refuses %s', (_what, buf) => {
    expect(() => parseXattrList(buf)).toThrow(GVariantError);
  });
});

describe('bootc image labels', () => {
  it('finds where the derived layers begin from ostree.final-diffid', () => {
    const img = bootcImageOf(config({ 'ostree.commit': 'c0ffee', 'ostree.final-diffid': 'sha256:b', 'containers.bootc': '1', version: '9.6.1' }, ['sha256:a', 'sha256:b', 'sha256:c']), 3);
    expect(img).toEqual({ ostreeCommit: 'c0ffee', version: '9.6.1', bootable: true, firstDerivedLayer: 2, layerCount: 3 });
  });
  it('treats a chunkah-style image (bootc label, no ostree objects) as all derived layers', () => {
    expect(bootcImageOf(config({ 'containers.bootc': '1' }), 400)?.firstDerivedLayer).toBe(0);
  });
  it('leaves a plain OCI image alone', () => {
    expect(bootcImageOf(config({ maintainer: 'x' }), 2)).toBeUndefined();
    expect(bootcImageOf(Buffer.from('{}'), 2)).toBeUndefined();
  });
  it('refuses a final-diffid that names no layer (exit 4, the label named)', () => {
    const err = thrown(() => bootcImageOf(config({ 'ostree.commit': 'c', 'ostree.final-diffid': 'sha256:zz' }, ['sha256:a']), 1));
    expect(err.kind).toBe('verification');
    expect(err.exitCode).toBe(4);
    expect(err.field).toContain('ostree.final-diffid');
  });
});

describe('pull summary line', () => {
  it('names the ostree commit and what the derived layers dropped', () => {
    const s = {
      image: 'r/node:1', manifestDigest: 'sha256:m', source: 'r/node', dest: '/d', layers: 3, entries: 9, files: 4, dirs: 2, symlinks: 0, hardlinks: 1,
      whiteouts: 0, devicesSkipped: 0, filtered: { opt: 3, root: 1 }, xattrLinks: 2, runtimeInjectedRemoved: [], factoryVarEntries: 0, expandedBytes: 10, compressedBytes: 5, seconds: 1,
      transfer: {} as PullToDestSummary['transfer'], bootc: { ostreeCommit: 'c0ffee', bootable: true, firstDerivedLayer: 2, layerCount: 3 },
    } satisfies PullToDestSummary;
    expect(formatPullSummary(s)).toMatch(/, bootc image \(ostree commit c0ffee\), dropped outside \/usr \/etc \/var: opt 3, root 1, 1\.00 s\n$/);
  });
});

describe('bootc path rules', () => {
  it.each([
    [['etc', 'passwd'], false, { keep: ['usr', 'etc', 'passwd'] }],
    [['sysroot', 'ostree', 'repo', 'config'], false, { keep: ['sysroot', 'ostree', 'repo', 'config'] }],
    [['opt', 'x'], false, { keep: ['opt', 'x'] }],
    [['etc', 'kubelet.conf'], true, { keep: ['usr', 'etc', 'kubelet.conf'] }],
    [['var', 'lib', 'x'], true, { keep: ['usr', 'share', 'factory', 'var', 'lib', 'x'] }],
    [['usr', 'bin', 'x'], true, { keep: ['usr', 'bin', 'x'] }],
    [['run'], true, { keep: ['run'] }],
    [['run', 'lock'], true, { drop: 'run' }],
    [['opt', 'vendor'], true, { drop: 'opt' }],
    [['sysroot', 'ostree'], true, { drop: 'sysroot' }],
    [[], true, { keep: [] }],
  ])('%j in a %s-derived layer', (comps, derived, want) => {
    expect(bootcPath(comps, derived)).toEqual(want);
  });
  it('recognises repo content objects only at their exact place', () => {
    expect(repoObjectOf(objectPath(CSUM, 'file-xattrs-link').split('/'))).toEqual({ csum: CSUM, ext: 'file-xattrs-link' });
    expect(repoObjectOf(['usr', 'ostree', 'repo', 'objects', 'ab', `${'ab'.repeat(31)}.file`])).toBeUndefined();
    expect(repoObjectOf(objectPath(CSUM, 'dirtree').split('/'))).toBeUndefined();
  });
});

describe('bad ostree-native input', () => {
  let sb: Sandbox;
  beforeEach(() => { sb = sandbox(); });
  afterEach(() => {
    expect(sb.canaryIntact()).toBe(true);
    sb.cleanup();
  });
  const ostreeOnly: BootcImage = { ostreeCommit: 'c', bootable: true, firstDerivedLayer: 1, layerCount: 1 };
  const fails = async (tar: Buffer, path: string): Promise<PivotError> => {
    const err = await unpackLayers(sb.dest, [tarLayer(tar)], options({ bootc: ostreeOnly })).then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(PivotError);
    const pe = err as PivotError;
    expect([4, 5]).toContain(pe.exitCode);
    expect(pe.path).toBe(path);
    return pe;
  };
  const link = objectPath(CSUM, 'file-xattrs-link');
  const file = objectPath(CSUM, 'file');

  it('an xattr object over 1 MiB, refused before it is read', async () => {
    const t = new TarBuilder().file(link, Buffer.alloc(MAX_XATTRS_OBJECT + 1)).file(file, 'x').end();
    expect((await fails(t, link)).kind).toBe('unpack');
  });
  it('a .file-xattrs-link with another entry after it instead of its .file', async () => {
    const t = new TarBuilder().file(link, encodeXattrList(new Map())).file('usr/x', 'x').end();
    await fails(t, link);
  });
  it('a .file-xattrs-link at the end of a layer', async () => {
    await fails(new TarBuilder().file(link, encodeXattrList(new Map())).end(), link);
  });
  it('a .file-xattrs-link followed by a different object', async () => {
    const t = new TarBuilder().file(link, encodeXattrList(new Map())).file(objectPath('cd'.repeat(32), 'file'), 'x').end();
    await fails(t, link);
  });
  it('a checkout path hardlinked to an object that is not in the image', async () => {
    const t = new TarBuilder().dir('usr').hardlink('usr/bash', file).end();
    await fails(t, 'usr/bash');
  });
  it('a pre-2025 link to a .file-xattrs that is not in the image', async () => {
    const t = new TarBuilder().hardlink(link, objectPath('ee'.repeat(32), 'file-xattrs')).file(file, 'x').end();
    await fails(t, link);
  });
  it('shared xattr objects beyond the memory cap', () => {
    const links = new XattrLinks();
    const big = encodeXattrList(new Map([['user.x', Buffer.alloc(MAX_XATTRS_OBJECT - 64)]]));
    const n = Math.ceil(MAX_SHARED_XATTRS_BYTES / big.length);
    for (let i = 0; i < n - 1; i++) links.sharedObject(`x/${i}`, big);
    const err = thrown(() => links.sharedObject('x/last', big));
    expect(err.kind).toBe('unpack');
    expect(err.path).toBe('x/last');
  });
  it('a malformed GVariant in an xattr object', async () => {
    const t = new TarBuilder().file(link, Buffer.from([0x05])).file(file, 'x').end();
    expect((await fails(t, link)).kind).toBe('unpack');
  });
});

describe('derived /var declared for systemd-tmpfiles', () => {
  let sb: Sandbox;
  beforeEach(() => { sb = sandbox(); });
  afterEach(() => {
    expect(sb.canaryIntact()).toBe(true);
    sb.cleanup();
  });
  it('one C line per entry, parents first; odd names ride along with their parent', () => {
    const fv = join(sb.dest, 'usr/share/factory/var');
    mkdirSync(join(fv, 'lib/app'), { recursive: true });
    writeFileSync(join(fv, 'lib/app/100%'), 'x');
    writeFileSync(join(fv, 'lib/app/with space'), 'x');
    expect(factoryVarLines(sb.dest)).toEqual([
      'C "/var/lib" - - - - /usr/share/factory/var/lib',
      'C "/var/lib/app" - - - - /usr/share/factory/var/lib/app',
      'C "/var/lib/app/100%%" - - - - /usr/share/factory/var/lib/app/100%%',
    ]);
    expect(declareFactoryVar(sb.dest)).toBe(3);
    expect(readFileSync(join(sb.dest, FACTORY_VAR_TMPFILES), 'utf8')).toContain('C "/var/lib/app" - - - - /usr/share/factory/var/lib/app\n');
  });
  it('writes nothing through a symlink the image put where usr/lib must be a directory', () => {
    mkdirSync(join(sb.dest, 'usr/share/factory/var/lib'), { recursive: true });
    symlinkSync(sb.canary, join(sb.dest, 'usr/lib'));
    expect(declareFactoryVar(sb.dest)).toBeUndefined();
    expect(existsSync(join(sb.canary, 'tmpfiles.d'))).toBe(false);
  });
});
