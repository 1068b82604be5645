// ostree-native images from a real `ostree commit`, checked against ostree itself: the exported
// repo part passes `ostree fsck` in both .file-xattrs-link forms, and the unpacked tree equals
// `ostree checkout` of the same commit.
import { chmodSync, lstatSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TarBuilder } from '../helpers/tar-builder.ts';
import { bootcImageOf } from '../../src/unpack/bootc.ts';
import { unpackLayers, type UnpackSummary } from '../../src/unpack/index.ts';
import { xattrs } from '../../src/xattr.ts';
import { exportOstreeLayers, objectPath, ostreeImageConfig, type OstreeCommit } from '../helpers/ostree-image.ts';
import { scanTree, type NodeFacts } from '../helpers/tree-compare.ts';
import { checkout, derivedLayer, extractRepo, fsck, makeCommit } from './ostree-fixture.ts';
import { GZIP, options, sandbox, tarLayer, type Sandbox } from './util.ts';

const isRoot = process.getuid?.() === 0;
let ostreeOk = false;
try {
  await execa('ostree', ['--version']);
  ostreeOk = true;
} catch { /* not installed */ }

let sb: Sandbox;
let commit: OstreeCommit;
beforeAll(async () => {
  sb = sandbox();
  if (isRoot && ostreeOk) commit = await makeCommit(join(sb.base, 'dest-work'));
});
afterAll(() => {
  expect(sb.canaryIntact()).toBe(true);
  sb.cleanup();
});

describe.skipIf(!isRoot || !ostreeOk)('ostree-native fixture builder', () => {
  it.each(['file', 'hardlink'] as const)('writes a repo that ostree fsck accepts (.file-xattrs-link as %s)', async (form) => {
    const tars = exportOstreeLayers(commit, { chunks: 8, xattrsLink: form });
    expect(tars).toHaveLength(9);
    const repo = await extractRepo(tars, join(sb.base, `dest-fsck-${form}`));
    const r = await fsck(repo);
    expect(r.output).toContain('no errors found');
    expect(r.ok).toBe(true);
    expect(readFileSync(join(repo, 'config'), 'utf8')).toContain('mode=bare-split-xattrs');
  });

  it('is checked for real: fsck rejects an altered xattr object', async () => {
    const tars = exportOstreeLayers(commit, { chunks: 2, xattrsLink: 'file' });
    const repo = await extractRepo(tars, join(sb.base, 'dest-fsck-bad'));
    const ping = commit.entries.find((e) => e.path === 'usr/bin/ping')!;
    writeFileSync(join(repo, '..', '..', '..', objectPath(ping.checksum, 'file-xattrs-link')), Buffer.alloc(0));
    expect((await fsck(repo)).ok).toBe(false);
  });
});

/** Unpacks the tars with the bootc rules the image config implies. */
async function unpackImage(dest: string, tars: Buffer[], finalOstreeLayer: number, keepSysroot = false): Promise<UnpackSummary> {
  const { config } = ostreeImageConfig(commit, tars, finalOstreeLayer);
  const bootc = bootcImageOf(Buffer.from(JSON.stringify(config)), tars.length);
  expect(bootc?.ostreeCommit).toBe(commit.commit);
  mkdirSync(dest, { recursive: true });
  return unpackLayers(dest, tars.map((t) => tarLayer(t, GZIP)), options({ keepSysroot, ...(bootc ? { bootc } : {}) }));
}

/**
 * Facts compared with ostree's checkout. Left out: security.selinux (the selinux phase labels
 * the tree; docs/unpack.md), symlink mtimes (ostree checkout does not set them), and hardlink
 * grouping of empty files (ostree links all identical empty files to one object; the exporter
 * writes them as separate plain files, and ostree checkout writes them afresh, with the time of the
 * checkout).
 */
function facts(root: string): Map<string, NodeFacts> {
  const tree = scanTree(root, { ignoreXattrs: ['security.selinux'] });
  for (const f of tree.values()) {
    if (f.type === 'symlink') delete f.mtimeUs;
    if (f.size === 0) {
      delete f.links;
      delete f.mtimeUs;
    }
  }
  return tree;
}

function diff(a: Map<string, NodeFacts>, b: Map<string, NodeFacts>): string[] {
  const out: string[] = [];
  for (const k of new Set([...a.keys(), ...b.keys()])) {
    const x = JSON.stringify(a.get(k) ?? null);
    const y = JSON.stringify(b.get(k) ?? null);
    if (x !== y) out.push(`${k}: ${x} != ${y}`);
  }
  return out.sort();
}

describe.skipIf(!isRoot || !ostreeOk)('ground truth: ostree checkout', () => {
  let truth: string;
  beforeAll(async () => {
    truth = join(sb.base, 'dest-checkout');
    await checkout(commit.repo, commit.commit, truth);
  });

  it.each(['file', 'hardlink'] as const)('the unpacked tree equals the checkout of the commit (9 layers, links as %s)', async (form) => {
    const tars = exportOstreeLayers(commit, { chunks: 8, xattrsLink: form });
    const dest = join(sb.base, `dest-tree-${form}`);
    const s = await unpackImage(dest, tars, 8);
    expect(lstatSync(join(dest, 'etc'), { throwIfNoEntry: false })).toBeUndefined();
    expect(lstatSync(join(dest, 'sysroot/ostree'), { throwIfNoEntry: false })).toBeUndefined();
    expect(s.filtered).toEqual({});
    expect(s.xattrLinks).toBe(new Set(commit.entries.filter((e) => e.type !== 'dir').map((e) => e.checksum)).size);
    expect(diff(facts(truth), facts(dest))).toEqual([]);
    // The capability is in PAX and in the link; the user.* xattrs too.
    expect(xattrs().getAttributeSync(join(dest, 'usr/bin/ping'), 'security.capability')?.toString('hex')).toBe('0100000200200000000000000000000000000000');
  });

  it('takes xattrs from the .file-xattrs-link when the stream has no PAX for them', async () => {
    const noPax = exportOstreeLayers(commit, { chunks: 2, xattrsLink: 'file' }).map((t) => stripPaxXattrs(t));
    const dest = join(sb.base, 'dest-nopax');
    await unpackImage(dest, noPax, 2);
    expect(diff(facts(truth), facts(dest))).toEqual([]);
  });

  it('with keepSysroot, the kept repo passes ostree fsck', async () => {
    const dest = join(sb.base, 'dest-keep');
    await unpackImage(dest, exportOstreeLayers(commit, { chunks: 4, xattrsLink: 'hardlink' }), 4, true);
    const r = await fsck(join(dest, 'sysroot/ostree/repo'));
    expect(r.output).toContain('no errors found');
  });

  it('a derived layer gives the checkout with the layer applied by hand (OCI whiteouts, bootc paths)', async () => {
    const tars = [...exportOstreeLayers(commit, { chunks: 8, xattrsLink: 'file' }), derivedLayer()];
    const dest = join(sb.base, 'dest-derived');
    const s = await unpackImage(dest, tars, 8);
    expect(s.filtered).toEqual({ opt: 3, root: 2, run: 1, tmp: 1 });
    expect(s.runtimeInjectedRemoved).toEqual(['usr/etc/hostname', 'usr/etc/resolv.conf']);
    expect(s.factoryVarEntries).toBe(4);

    const want = join(sb.base, 'dest-derived-by-hand');
    // cp -a keeps owners, modes, xattrs and hardlinks.
    await execa('cp', ['-a', truth, want]);
    const put = (rel: string, body: string, mode = 0o644): void => {
      writeFileSync(join(want, rel), body);
      chmodSync(join(want, rel), mode);
    };
    put('usr/etc/kubelet.conf', 'kubelet config\n');
    rmSync(join(want, 'usr/etc/ssh/sshd_config'));
    put('usr/bin/kubelet', 'kubelet\n', 0o755);
    xattrs().setAttributeSync(join(want, 'usr/bin/kubelet'), 'user.origin', Buffer.from('derived'));
    rmSync(join(want, 'usr/bin/su'));
    rmSync(join(want, 'usr/share/data'), { recursive: true });
    mkdirSync(join(want, 'usr/share/data'));
    put('usr/share/data/only', 'only survivor\n');
    mkdirSync(join(want, 'usr/share/factory/var/lib/kubelet'), { recursive: true, mode: 0o755 });
    chmodSync(join(want, 'usr/share/factory/var/lib/kubelet'), 0o700);
    put('usr/share/factory/var/lib/kubelet/config.yaml', 'kind: KubeletConfiguration\n');
    mkdirSync(join(want, 'usr/share/factory/var/tmp'));
    chmodSync(join(want, 'usr/share/factory/var/tmp'), 0o1777);
    // Derived /var content is declared for systemd-tmpfiles (factory-var.ts), parents first.
    mkdirSync(join(want, 'usr/lib/tmpfiles.d'), { recursive: true });
    put('usr/lib/tmpfiles.d/node-image-pivot-factory-var.conf', [
      "# Written by node-image-pivot: seeds /var from the image's derived layers (docs/unpack.md).",
      'C "/var/lib" - - - - /usr/share/factory/var/lib',
      'C "/var/lib/kubelet" - - - - /usr/share/factory/var/lib/kubelet',
      'C "/var/lib/kubelet/config.yaml" - - - - /usr/share/factory/var/lib/kubelet/config.yaml',
      'C "/var/tmp" - - - - /usr/share/factory/var/tmp',
      '',
    ].join('\n'));
    mkdirSync(join(want, 'run'));
    mkdirSync(join(want, 'tmp'));
    chmodSync(join(want, 'tmp'), 0o1777);
    // File mtimes of the new files come from the layer; compare everything else.
    const noMtime = (m: Map<string, NodeFacts>): Map<string, NodeFacts> => {
      for (const [k, f] of m) if (['usr/lib/tmpfiles.d/node-image-pivot-factory-var.conf', 'usr/etc/kubelet.conf', 'usr/bin/kubelet', 'usr/share/data/only', 'usr/share/factory/var/lib/kubelet/config.yaml'].includes(k)) delete f.mtimeUs;
      return m;
    };
    expect(diff(noMtime(facts(want)), noMtime(facts(dest)))).toEqual([]);
  });
});

/** Drops every PAX SCHILY.xattr.* record, keeping path/linkpath (tars written by TarBuilder). */
function stripPaxXattrs(tar: Buffer): Buffer {
  const out: Buffer[] = [];
  for (let off = 0; off + 512 <= tar.length;) {
    const header = tar.subarray(off, off + 512);
    const size = parseInt(header.subarray(124, 136).toString('latin1').replace(/\0.*$/, '').trim() || '0', 8);
    const body = tar.subarray(off + 512, off + 512 + Math.ceil(size / 512) * 512);
    off += 512 + body.length;
    if (String.fromCharCode(header[156]!) !== 'x') {
      out.push(header, body);
      continue;
    }
    const kept = paxRecords(body.subarray(0, size)).filter(([k]) => !k.startsWith('SCHILY.xattr.'));
    if (kept.length) out.push(new TarBuilder().paxHeader(kept).end(0));
  }
  return Buffer.concat(out);
}

function paxRecords(buf: Buffer): Array<[string, Buffer]> {
  const out: Array<[string, Buffer]> = [];
  for (let off = 0; off < buf.length;) {
    const sp = buf.indexOf(0x20, off);
    const len = Number(buf.subarray(off, sp).toString('latin1'));
    const rec = buf.subarray(sp + 1, off + len - 1);
    const eq = rec.indexOf(0x3d);
    out.push([rec.subarray(0, eq).toString('utf8'), Buffer.from(rec.subarray(eq + 1))]);
    off += len;
  }
  return out;
}

describe.skipIf(!isRoot || !ostreeOk)('derived /var content on a node that already has a /var', () => {
  it('systemd-tmpfiles --create adds what the live /var lacks and keeps what it has', async () => {
    const dest = join(sb.base, 'dest-var');
    await unpackImage(dest, [...exportOstreeLayers(commit, { chunks: 1, xattrsLink: 'file' }), derivedLayer()], 1);
    // The node's /var: kubelet's config already written locally, nothing else of the image's.
    mkdirSync(join(dest, 'var/lib/kubelet'), { recursive: true });
    writeFileSync(join(dest, 'var/lib/kubelet/config.yaml'), 'local\n');
    mkdirSync(join(dest, 'var/lib/other'));
    const r = await execa('systemd-tmpfiles', ['--create', `--root=${dest}`, 'node-image-pivot-factory-var.conf'], { reject: false, all: true });
    expect(r.all).toBe('');
    expect(readFileSync(join(dest, 'var/lib/kubelet/config.yaml'), 'utf8')).toBe('local\n');
    rmSync(join(dest, 'var/lib/kubelet/config.yaml'));
    await execa('systemd-tmpfiles', ['--create', `--root=${dest}`, 'node-image-pivot-factory-var.conf']);
    expect(readFileSync(join(dest, 'var/lib/kubelet/config.yaml'), 'utf8')).toBe('kind: KubeletConfiguration\n');
    expect(lstatSync(join(dest, 'var/lib/other')).isDirectory()).toBe(true);
  });
});
