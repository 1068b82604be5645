// Labels after the unpack: the new policy's file_contexts (asked through the real matchpathcon,
// src/selinux.ts lookupContexts) decides which files the overlay shows from the booted side must
// be staged after all.
import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync, chownSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PivotError } from '../../../src/errors.ts';
import { resetFailpoints } from '../../../src/failpoints.ts';
import { lookupContexts } from '../../../src/selinux.ts';
import { shownFromBooted, stageRelabelled, type BatchLabelLookup } from '../../../src/unpack/delta/labels.ts';
import { DeltaTarget } from '../../../src/unpack/delta/target.ts';
import { treeDigest } from '../../../src/unpack/delta/digest.ts';
import { unpackLayers } from '../../../src/unpack/index.ts';
import { xattrs } from '../../../src/xattr.ts';
import { TarBuilder } from '../../helpers/tar-builder.ts';
import { options, tarLayer } from '../util.ts';

const haveMatchpathcon = spawnSync('matchpathcon', ['-V']).error === undefined;
const BIN = 'system_u:object_r:bin_t:s0';
const USR = 'system_u:object_r:usr_t:s0';
const LIB = 'system_u:object_r:lib_t:s0';
let base: string;
let booted: string;
let delta: string;
let fileContexts: string;
let bootedBefore: string;
const label = (p: string, l: string): void => xattrs().setAttributeSync(p, 'security.selinux', Buffer.from(`${l}\0`));

beforeEach(async () => {
  base = mkdtempSync(join(tmpdir(), 'nip-delta-labels-'));
  booted = join(base, 'booted/usr');
  delta = join(base, 'delta');
  for (const d of ['bin', 'lib', 'share/gone']) mkdirSync(join(booted, d), { recursive: true });
  const files: Array<[string, string]> = [['bin/right', BIN], ['bin/wrong', USR], ['lib/wrong', USR], ['lib/right', LIB], ['share/gone/x', USR]];
  for (const [rel, l] of files) {
    writeFileSync(join(booted, rel), `content of ${rel}\n`);
    label(join(booted, rel), l);
  }
  chownSync(join(booted, 'bin/wrong'), 12, 34);
  chmodSync(join(booted, 'bin/wrong'), 0o4711);
  xattrs().setAttributeSync(join(booted, 'bin/wrong'), 'user.keep', 'kept');
  symlinkSync('right', join(booted, 'bin/link-wrong'));
  label(join(booted, 'bin/link-wrong'), USR);
  // The policy of the node image: bin_t under /usr/bin, lib_t under /usr/lib, usr_t elsewhere.
  fileContexts = join(base, 'file_contexts');
  writeFileSync(fileContexts, `/usr(/.*)?\t${USR}\n/usr/bin(/.*)?\t${BIN}\n/usr/lib(/.*)?\t${LIB}\n`);
  bootedBefore = treeDigest(booted).digest;
  // The image: everything as booted (labels are not in layers), share/gone dropped.
  const t = new TarBuilder().dir('usr').dir('usr/bin').dir('usr/lib').dir('usr/share');
  for (const rel of ['bin/right', 'lib/wrong', 'lib/right']) t.file(`usr/${rel}`, `content of ${rel}\n`);
  t.file('usr/bin/wrong', 'content of bin/wrong\n', { uid: 12, gid: 34, mode: 0o4711, xattrs: { 'user.keep': 'kept' } }).symlink('usr/bin/link-wrong', 'right');
  const target = new DeltaTarget(delta, { allowDevices: false, isRoot: true, bootedUsr: booted });
  await unpackLayers(delta, [tarLayer(t.end())], options({ target }));
  expect(target.stats.skipped).toBe(5);
});
afterEach(() => {
  expect(treeDigest(booted).digest).toBe(bootedBefore);
  delete process.env.NODE_IMAGE_PIVOT_FAILPOINTS;
  resetFailpoints();
  rmSync(base, { recursive: true, force: true });
});

const realLookup: BatchLabelLookup = (items) => lookupContexts(fileContexts, items);

describe.skipIf(process.getuid?.() !== 0 || !haveMatchpathcon)('stageRelabelled', () => {
  it('lists what the overlay shows from the booted side, not what is whited out or hidden', () => {
    expect(shownFromBooted(join(delta, 'usr'), booted).map((s) => `${s.rel}:${s.kind}`).sort())
      .toEqual(['bin/link-wrong:lnk', 'bin/right:file', 'bin/wrong:file', 'lib/right:file', 'lib/wrong:file']);
  });

  it('stages exactly the files and symlinks whose booted label is not the new policy\'s, with their metadata', async () => {
    const r = await stageRelabelled(join(delta, 'usr'), booted, realLookup);
    expect(r.checked).toBe(5);
    expect(r.staged.sort()).toEqual(['bin/link-wrong', 'bin/wrong', 'lib/wrong']);
    const st = lstatSync(join(delta, 'usr/bin/wrong'));
    expect([st.mode & 0o7777, st.uid, st.gid]).toEqual([0o4711, 12, 34]);
    expect(readFileSync(join(delta, 'usr/bin/wrong'), 'utf8')).toBe('content of bin/wrong\n');
    expect(xattrs().getAttributeSync(join(delta, 'usr/bin/wrong'), 'user.keep')?.toString()).toBe('kept');
    // The label is the selinux phase's to write (setfiles over the delta), not the booted one.
    expect(xattrs().getAttributeSync(join(delta, 'usr/bin/wrong'), 'security.selinux')).toBeNull();
    expect(readlinkSync(join(delta, 'usr/bin/link-wrong'))).toBe('right');
    expect(existsSync(join(delta, 'usr/bin/right'))).toBe(false);
    expect(existsSync(join(delta, '.relabel-tmp'))).toBe(false);
    // A second run finds nothing left to stage.
    expect((await stageRelabelled(join(delta, 'usr'), booted, realLookup)).staged).toEqual([]);
  });

  it('a failure midway leaves whole files only, and the rerun stages the rest', async () => {
    process.env.NODE_IMAGE_PIVOT_FAILPOINTS = 'delta.relabel:error@2';
    resetFailpoints();
    const e = await stageRelabelled(join(delta, 'usr'), booted, realLookup).catch((err: unknown) => err);
    expect((e as PivotError).facts).toMatchObject({ failpoint: 'delta.relabel' });
    delete process.env.NODE_IMAGE_PIVOT_FAILPOINTS;
    resetFailpoints();
    const again = await stageRelabelled(join(delta, 'usr'), booted, realLookup);
    expect(again.staged).toHaveLength(2);
    for (const rel of ['bin/wrong', 'lib/wrong']) expect(readFileSync(join(delta, 'usr', rel), 'utf8')).toBe(`content of ${rel}\n`);
  });

  it('a lookup that fails (no matchpathcon answer) is the selinux error and stages nothing', async () => {
    writeFileSync(fileContexts, 'this is not a file_contexts line\n');
    const e = await stageRelabelled(join(delta, 'usr'), booted, realLookup).catch((err: unknown) => err);
    expect(e).toBeInstanceOf(PivotError);
    expect((e as PivotError).kind).toBe('selinux');
    expect(shownFromBooted(join(delta, 'usr'), booted)).toHaveLength(5);
  });
});
