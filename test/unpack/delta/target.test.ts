// DeltaTarget on disk, case by case: what the delta holds (and leaves out) after real unpacks
// against a booted tree in a temp dir. The oracle test proves the merged view; these prove that
// the delta is small for the right reasons, and that bad input changes nothing booted.
import { linkSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PivotError } from '../../../src/errors.ts';
import { resetFailpoints } from '../../../src/failpoints.ts';
import { shownFromBooted } from '../../../src/unpack/delta/labels.ts';
import { DeltaTarget, type DeltaTargetOptions } from '../../../src/unpack/delta/target.ts';
import { treeDigest } from '../../../src/unpack/delta/digest.ts';
import { unpackLayers } from '../../../src/unpack/index.ts';
import { xattrs } from '../../../src/xattr.ts';
import { TarBuilder } from '../../helpers/tar-builder.ts';
import { thrown } from '../../helpers/thrown.ts';
import { options, tarLayer } from '../util.ts';

const isRoot = process.getuid?.() === 0;
let base: string;
let booted: string;
let delta: string;
let bootedBefore: string;

function bytes(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) % 251;
  return b;
}

beforeEach(() => {
  base = mkdtempSync(join(tmpdir(), 'nip-delta-target-'));
  booted = join(base, 'booted');
  delta = join(base, 'delta');
  mkdirSync(join(booted, 'usr/bin'), { recursive: true });
  writeFileSync(join(booted, 'usr/bin/same'), 'same');
  writeFileSync(join(booted, 'usr/bin/big'), bytes(700_000, 1));
  writeFileSync(join(booted, 'usr/bin/gone'), 'gone');
  symlinkSync('same', join(booted, 'usr/bin/link'));
  mkdirSync(join(booted, 'usr/share/old'), { recursive: true });
  writeFileSync(join(booted, 'usr/share/old/a'), 'a');
  bootedBefore = treeDigest(booted).digest;
});
afterEach(() => {
  expect(treeDigest(booted).digest).toBe(bootedBefore);
  delete process.env.NODE_IMAGE_PIVOT_FAILPOINTS;
  resetFailpoints();
  rmSync(base, { recursive: true, force: true });
});

const target = (over: Partial<DeltaTargetOptions> = {}): DeltaTarget => new DeltaTarget(delta, { allowDevices: false, isRoot, bootedUsr: join(booted, 'usr'), ...over });
const has = (rel: string): boolean => lstatSync(join(delta, rel), { throwIfNoEntry: false }) !== undefined;
const layer = (t: TarBuilder): ReturnType<typeof tarLayer> => tarLayer(t.end());
const image = (): TarBuilder => new TarBuilder().dir('usr').dir('usr/bin').dir('usr/share');

describe('DeltaTarget', () => {
  it('leaves out identical files and symlinks, writes what differs, hides what the image lacks', async () => {
    const t = target();
    const l1 = image().file('usr/bin/same', 'same').symlink('usr/bin/link', 'same').file('usr/bin/big', bytes(700_000, 1)).file('usr/bin/new', 'new');
    await unpackLayers(delta, [layer(l1)], options({ target: t }));
    expect(['usr/bin/same', 'usr/bin/link', 'usr/bin/big'].map(has)).toEqual([false, false, false]);
    expect(readFileSync(join(delta, 'usr/bin/new'), 'utf8')).toBe('new');
    // usr/bin keeps a booted file, so it gets a whiteout; usr/share has nothing of the image's.
    const gone = lstatSync(join(delta, 'usr/bin/gone'));
    expect([gone.isCharacterDevice(), gone.rdev]).toEqual([true, 0]);
    expect(xattrs().getAttributeSync(join(delta, 'usr/share'), 'trusted.overlay.opaque')?.toString()).toBe('y');
    expect(t.stats).toMatchObject({ skipped: 3, skippedBytes: 700_004, contentCompared: 2, whiteouts: 1, opaqueDirs: 1, materialized: 0 });
  });

  it.each([0, 300_000, 699_999])('a difference at byte %i of a large file still writes the image\'s exact bytes', async (at) => {
    const data = bytes(700_000, 1);
    data[at] = (data[at]! + 1) % 256;
    const t = target();
    await unpackLayers(delta, [layer(image().file('usr/bin/big', data))], options({ target: t }));
    expect(readFileSync(join(delta, 'usr/bin/big')).equals(data)).toBe(true);
    expect(t.stats.skipped).toBe(0);
  });

  it('a later layer can put back, replace or white out a path an earlier layer matched or wrote', async () => {
    const t = target();
    const l1 = image().file('usr/bin/same', 'changed').file('usr/bin/big', bytes(700_000, 1)).file('usr/bin/gone', 'gone');
    const l2 = new TarBuilder().file('usr/bin/same', 'same').file('usr/bin/big', 'now small').whiteout('usr/bin/gone');
    await unpackLayers(delta, [layer(l1), layer(l2)], options({ target: t }));
    expect(has('usr/bin/same')).toBe(false);
    expect(readFileSync(join(delta, 'usr/bin/big'), 'utf8')).toBe('now small');
    expect(lstatSync(join(delta, 'usr/bin/gone')).isCharacterDevice()).toBe(true);
  });

  it('a hardlink to a skipped file is left out when the booted path is the same, else the target is materialized once', async () => {
    linkSync(join(booted, 'usr/bin/same'), join(booted, 'usr/bin/same-hl'));
    writeFileSync(join(booted, 'usr/bin/other'), 'different');
    bootedBefore = treeDigest(booted).digest;
    const t = target();
    const l1 = image().file('usr/bin/same', 'same').hardlink('usr/bin/same-hl', 'usr/bin/same').hardlink('usr/bin/other', 'usr/bin/same').hardlink('usr/bin/third', 'usr/bin/same');
    await unpackLayers(delta, [layer(l1)], options({ target: t }));
    expect(has('usr/bin/same-hl')).toBe(false);
    const [same, other, third] = ['same', 'other', 'third'].map((n) => lstatSync(join(delta, 'usr/bin', n)));
    expect(readFileSync(join(delta, 'usr/bin/other'), 'utf8')).toBe('same');
    expect(new Set([same!.ino, other!.ino, third!.ino]).size).toBe(1);
    expect(t.stats.materialized).toBe(1);
  });

  it('counts a skipped hardlink\'s content once: expanded minus skipped bytes is what the delta holds', async () => {
    linkSync(join(booted, 'usr/bin/big'), join(booted, 'usr/bin/big-hl'));
    bootedBefore = treeDigest(booted).digest;
    const t = target();
    const s = await unpackLayers(delta, [layer(image().file('usr/bin/big', bytes(700_000, 1)).hardlink('usr/bin/big-hl', 'usr/bin/big').file('usr/bin/new', 'new'))], options({ target: t }));
    expect(t.stats).toMatchObject({ skipped: 2, skippedBytes: 700_000 });
    expect(s.expandedBytes - t.stats.skippedBytes).toBe(3);
  });

  it('an opaque whiteout after a same-layer file below a lower directory removes that file too, as DirectTarget does', async () => {
    mkdirSync(join(booted, 'usr/d/sub'), { recursive: true });
    writeFileSync(join(booted, 'usr/d/sub/f'), 'booted');
    bootedBefore = treeDigest(booted).digest;
    const l1 = new TarBuilder().dir('usr').dir('usr/d').dir('usr/d/sub').file('usr/d/sub/f', 'changed');
    // usr/d/sub itself is not declared again: the opaque marker takes it, and f with it.
    const l2 = new TarBuilder().file('usr/d/sub/f', 'booted').opaque('usr/d');
    // A later layer brings usr/d/sub back, as an implicit parent: it holds g alone.
    const l3 = new TarBuilder().file('usr/d/sub/g', 'g');
    const full = join(base, 'full');
    await unpackLayers(full, [layer(l1), layer(l2), layer(l3)], options());
    expect(readdirSync(join(full, 'usr/d/sub'))).toEqual(['g']);
    await unpackLayers(delta, [layer(l1), layer(l2), layer(l3)], options({ target: target() }));
    expect(shownFromBooted(join(delta, 'usr'), join(booted, 'usr'))).toEqual([]);
  });

  it('a hardlink to a skipped symlink is left out when identical, else the symlink is materialized; a link to itself is a no-op', async () => {
    symlinkSync('same', join(booted, 'usr/bin/link2'));
    writeFileSync(join(booted, 'usr/bin/link3'), 'a file');
    bootedBefore = treeDigest(booted).digest;
    const t = target();
    const l1 = image().symlink('usr/bin/link', 'same').hardlink('usr/bin/link2', 'usr/bin/link').hardlink('usr/bin/link3', 'usr/bin/link')
      .file('usr/bin/same', 'same').hardlink('usr/bin/same', 'usr/bin/same');
    await unpackLayers(delta, [layer(l1)], options({ target: t }));
    expect([has('usr/bin/link2'), has('usr/bin/same')]).toEqual([false, false]);
    expect(['link', 'link3'].map((n) => readlinkSync(join(delta, 'usr/bin', n)))).toEqual(['same', 'same']);
    expect(lstatSync(join(delta, 'usr/bin/link')).ino).toBe(lstatSync(join(delta, 'usr/bin/link3')).ino);
  });

  it('an implicit parent made by this layer survives its opaque whiteout, and an identical file may replace it later', async () => {
    writeFileSync(join(booted, 'usr/a'), 'A');
    bootedBefore = treeDigest(booted).digest;
    const l1 = new TarBuilder().dir('usr').file('usr/a/b/f', 'f').opaque('usr');
    const l2 = new TarBuilder().file('usr/a', 'A');
    const t = target();
    await unpackLayers(delta, [layer(l1), layer(l2)], options({ target: t }));
    expect(has('usr/a')).toBe(false);
    expect(t.stats.skipped).toBe(1);
  });

  it('never leaves out a path below a booted symlink that the image makes a directory', async () => {
    mkdirSync(join(booted, 'usr/lib'));
    writeFileSync(join(booted, 'usr/lib/f'), 'f');
    symlinkSync('lib', join(booted, 'usr/lib64'));
    bootedBefore = treeDigest(booted).digest;
    await unpackLayers(delta, [layer(image().dir('usr/lib64').file('usr/lib64/f', 'f'))], options({ target: target() }));
    expect(readFileSync(join(delta, 'usr/lib64/f'), 'utf8')).toBe('f');
  });

  it('follows a skipped symlink as the image would when a later entry writes through it', async () => {
    mkdirSync(join(booted, 'usr/lib'));
    symlinkSync('lib', join(booted, 'usr/lib64'));
    bootedBefore = treeDigest(booted).digest;
    const t = target();
    await unpackLayers(delta, [layer(image().dir('usr/lib').symlink('usr/lib64', 'lib').file('usr/lib64/new', 'n'))], options({ target: t }));
    expect(has('usr/lib64')).toBe(false);
    expect(readFileSync(join(delta, 'usr/lib/new'), 'utf8')).toBe('n');
  });

  it('compares the new policy\'s label with the booted one', async () => {
    xattrs().setAttributeSync(join(booted, 'usr/bin/same'), 'security.selinux', Buffer.from('system_u:object_r:bin_t:s0\0'));
    bootedBefore = treeDigest(booted).digest;
    const l = (): ReturnType<typeof layer> => layer(image().file('usr/bin/same', 'same'));
    await unpackLayers(delta, [l()], options({ target: target({ labelFor: () => 'system_u:object_r:bin_t:s0' }) }));
    expect(has('usr/bin/same')).toBe(false);
    rmSync(delta, { recursive: true });
    await unpackLayers(delta, [l()], options({ target: target({ labelFor: () => 'system_u:object_r:usr_t:s0' }) }));
    expect(readFileSync(join(delta, 'usr/bin/same'), 'utf8')).toBe('same');
  });

  it('uses the booted ostree repo: a known object is not written, its links are left out or materialized from it', async () => {
    const csum = 'ab'.padEnd(64, 'c');
    const repo = join(base, 'repo');
    mkdirSync(join(repo, 'objects/ab'), { recursive: true });
    const object = join(repo, `objects/ab/${csum.slice(2)}.file`);
    writeFileSync(object, 'object content');
    linkSync(object, join(booted, 'usr/bin/obj'));
    writeFileSync(join(booted, 'usr/bin/copy'), 'object content');
    writeFileSync(join(booted, 'usr/bin/differs'), 'object CONTENT');
    bootedBefore = treeDigest(booted).digest;
    const objPath = `sysroot/ostree/repo/objects/ab/${csum.slice(2)}.file`;
    const t = target({ bootedRepo: repo });
    const l1 = image().dir('sysroot').dir('sysroot/ostree').dir('sysroot/ostree/repo').dir('sysroot/ostree/repo/objects').dir('sysroot/ostree/repo/objects/ab')
      .file(objPath, 'object content').hardlink('usr/bin/obj', objPath).hardlink('usr/bin/copy', objPath).hardlink('usr/bin/differs', objPath);
    await unpackLayers(delta, [layer(l1)], options({ target: t, keepSysroot: true }));
    expect([has('usr/bin/obj'), has('usr/bin/copy')]).toEqual([false, false]);
    expect(readFileSync(join(delta, 'usr/bin/differs'), 'utf8')).toBe('object content');
    // The hardlinked booted path is decided by inode; the copy and the same-size changed file are read.
    expect(t.stats).toMatchObject({ objectsInBootedRepo: 1, materialized: 1, contentCompared: 2 });
  });

  it('bootc cleanup sees the overlay: skipped /var seeds are declared, an empty runtime file the booted /usr also has is hidden', async () => {
    mkdirSync(join(booted, 'usr/share/factory/var/lib/app'), { recursive: true });
    writeFileSync(join(booted, 'usr/share/factory/var/lib/app/seed'), 'seed');
    mkdirSync(join(booted, 'usr/etc'));
    writeFileSync(join(booted, 'usr/etc/hostname'), '');
    bootedBefore = treeDigest(booted).digest;
    // One derived layer: var/ goes to usr/share/factory/var, etc/ to usr/etc (bootc.ts).
    const l = (): ReturnType<typeof layer> => layer(new TarBuilder().dir('usr').dir('var').dir('var/lib').dir('var/lib/app').file('var/lib/app/seed', 'seed')
      .file('var/lib/app/new', 'new').dir('etc').file('etc/hostname', ''));
    const bootc = { bootable: true, firstDerivedLayer: 0, layerCount: 1 };
    const full = join(base, 'full');
    const fs = await unpackLayers(full, [l()], options({ bootc }));
    const t = target();
    const ds = await unpackLayers(delta, [l()], options({ bootc, target: t }));
    expect(has('usr/share/factory/var/lib/app/seed')).toBe(false);
    expect([ds.factoryVarEntries, ds.runtimeInjectedRemoved]).toEqual([fs.factoryVarEntries, fs.runtimeInjectedRemoved]);
    const conf = 'usr/lib/tmpfiles.d/node-image-pivot-factory-var.conf';
    expect(readFileSync(join(delta, conf), 'utf8')).toBe(readFileSync(join(full, conf), 'utf8'));
    expect(lstatSync(join(delta, 'usr/etc/hostname')).isCharacterDevice()).toBe(true);
    expect(shownFromBooted(join(delta, 'usr'), join(booted, 'usr')).map((x) => x.rel)).toEqual(['share/factory/var/lib/app/seed']);
  });

  it('never hides a preserve path the image lacks: the booted one shows through for its bind', async () => {
    mkdirSync(join(booted, 'usr/lib/modules/6.1.0-booted'), { recursive: true });
    writeFileSync(join(booted, 'usr/lib/modules/6.1.0-booted/modules.dep'), 'dep');
    mkdirSync(join(booted, 'usr/lib/other'), { recursive: true });
    // bootedBefore in afterEach covers the tree as the test found it.
    bootedBefore = treeDigest(booted).digest;
    const t = target({ neverHide: ['usr/lib/modules'] });
    await unpackLayers(delta, [layer(image().dir('usr/lib').file('usr/bin/same', 'same'))], options({ target: t }));
    const whiteout = (rel: string): boolean => lstatSync(join(delta, rel), { throwIfNoEntry: false })?.isCharacterDevice() === true;
    expect(has('usr/lib/modules')).toBe(false);
    // What is not preserved is still hidden.
    expect(whiteout('usr/lib/other')).toBe(true);
    expect(whiteout('usr/bin/gone')).toBe(true);
  });

  it('refuses a missing booted /usr with a clear error', () => {
    const e = thrown(() => target({ bootedUsr: join(base, 'nope') }));
    expect(e).toBeInstanceOf(PivotError);
    expect((e as PivotError).kind).toBe('preflight');
    expect((e as PivotError).path).toBe(join(base, 'nope'));
  });

  it('a hardlink to nothing is the unpack error DirectTarget gives, and nothing booted changes', async () => {
    const e = await unpackLayers(delta, [layer(image().hardlink('usr/bin/x', 'usr/bin/missing'))], options({ target: target() })).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(PivotError);
    expect((e as PivotError).kind).toBe('unpack');
  });

  it.each([
    ['an opaque xattr', image().dir('usr/share/x', { xattrs: { 'trusted.overlay.opaque': 'y' } })],
    ['a redirect xattr', image().file('usr/bin/r', 'r', { xattrs: { 'trusted.overlay.redirect': '/x' } })],
    ['a 0/0 character device', image().add({ name: 'usr/bin/same', type: 'char', devmajor: 0, devminor: 0 })],
  ])('refuses an entry with %s (the overlay would obey it) with a path-safety error', async (_what, l) => {
    const e = await unpackLayers(delta, [layer(l)], options({ target: target(), allowDevices: true })).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(PivotError);
    expect([(e as PivotError).kind, (e as PivotError).exitCode]).toEqual(['path-safety', 5]);
    expect((e as PivotError).path).toMatch(/^usr\//);
  });

  it.each(['delta.skip', 'delta.materialize', 'delta.whiteouts'])('failpoint %s stops the unpack, booted /usr untouched', async (fp) => {
    process.env.NODE_IMAGE_PIVOT_FAILPOINTS = `${fp}:error`;
    resetFailpoints();
    const l1 = image().file('usr/bin/same', 'same').hardlink('usr/bin/hl', 'usr/bin/same');
    const e = await unpackLayers(delta, [layer(l1)], options({ target: target() })).catch((err: unknown) => err);
    expect((e as PivotError).facts).toMatchObject({ failpoint: fp });
  });

  it('leaves the tree alone outside usr/', async () => {
    await unpackLayers(delta, [layer(new TarBuilder().dir('etc').file('etc/x', 'same'))], options({ target: target() }));
    expect(readdirSync(delta).sort()).toEqual(['etc']);
  });
});
