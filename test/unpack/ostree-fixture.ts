// A small OS tree committed with real ostree, and the ground-truth tools around it: extract the
// repo part of the exported layers and `ostree fsck` it, `ostree checkout` the commit, and a
// podman-build-style derived layer.
import { chmodSync, chownSync, linkSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { xattrs } from '../../src/xattr.ts';
import { commitTree, type OstreeCommit } from '../helpers/ostree-image.ts';
import { TarBuilder } from '../helpers/tar-builder.ts';

/** security.capability for cap_net_raw+ep (VFS_CAP_REVISION_2). */
export const CAP_NET_RAW = Buffer.from('0100000200200000000000000000000000000000', 'hex');
export const SELINUX_BIN = Buffer.from('system_u:object_r:bin_t:s0');

function file(root: string, rel: string, body: string | Buffer, mode = 0o644, owner: [number, number] = [0, 0]): string {
  const p = join(root, rel);
  mkdirSync(join(p, '..'), { recursive: true });
  writeFileSync(p, body);
  chownSync(p, owner[0], owner[1]);
  chmodSync(p, mode);
  return p;
}

function dir(root: string, rel: string, mode = 0o755, owner: [number, number] = [0, 0]): void {
  const p = join(root, rel);
  mkdirSync(p, { recursive: true });
  chownSync(p, owner[0], owner[1]);
  chmodSync(p, mode);
}

/**
 * An ostree-style OS tree: /usr with binaries, a setuid file, capabilities, user.* and
 * security.selinux xattrs, hardlinked and zero-size files, symlinks; /usr/etc; and the root's
 * other top-level entries. `dataFiles` small files under usr/share/data feed the chunk layers.
 */
export function makeOsTree(root: string, dataFiles = 80): void {
  dir(root, '');
  for (const d of ['usr/bin', 'usr/lib', 'usr/share/doc', 'usr/lib/systemd/system', 'var', 'sysroot', 'opt']) dir(root, d);
  dir(root, 'var/tmp', 0o1777);
  symlinkSync('usr/bin', join(root, 'bin'));
  const bash = file(root, 'usr/bin/bash', '#!/bin/true\nbash\n', 0o755);
  linkSync(bash, join(root, 'usr/bin/sh-hardlink'));
  symlinkSync('bash', join(root, 'usr/bin/sh'));
  const ping = file(root, 'usr/bin/ping', 'ping binary\n', 0o755);
  xattrs().setAttributeSync(ping, 'security.capability', CAP_NET_RAW);
  xattrs().setAttributeSync(ping, 'security.selinux', SELINUX_BIN);
  file(root, 'usr/bin/su', 'su\n', 0o4755);
  const tagged = file(root, 'usr/lib/tagged', 'has user xattrs\n');
  xattrs().setAttributeSync(tagged, 'user.binary', Buffer.from([0, 1, 0xff, 0x0a]));
  xattrs().setAttributeSync(tagged, 'user.text', Buffer.from('value'));
  file(root, 'usr/lib/libz.so.1', 'libz\n', 0o755);
  symlinkSync('libz.so.1', join(root, 'usr/lib/libz.so'));
  symlinkSync('../..//usr/lib/libz.so.1', join(root, 'usr/lib/denormal-link'));
  file(root, 'usr/lib/os-release', 'ID=rhcos\nVERSION_ID=9.6\n');
  file(root, 'usr/share/doc/empty-a', '');
  file(root, 'usr/share/doc/empty-b', '');
  file(root, 'usr/share/doc/owned', 'owned by 999\n', 0o640, [999, 998]);
  dir(root, 'usr/share/polkit-1', 0o700, [0, 998]);
  file(root, 'usr/lib/systemd/system/demo.service', '[Service]\nExecStart=/usr/bin/true\n');
  for (let i = 0; i < dataFiles; i++) file(root, `usr/share/data/f${String(i).padStart(4, '0')}`, `data file ${i}\n`.repeat(1 + (i % 7)));
  dir(root, 'usr/etc');
  file(root, 'usr/etc/passwd', 'root:x:0:0:root:/root:/bin/bash\n');
  file(root, 'usr/etc/group', 'root:x:0:\n');
  dir(root, 'usr/etc/ssh');
  file(root, 'usr/etc/ssh/sshd_config', 'PermitRootLogin no\n', 0o600);
  file(root, 'usr/etc/machine-id', '');
  symlinkSync('../usr/lib/os-release', join(root, 'usr/etc/os-release'));
}

export async function makeCommit(work: string, dataFiles = 80): Promise<OstreeCommit> {
  const tree = join(work, 'tree');
  makeOsTree(tree, dataFiles);
  return commitTree(tree, work);
}

/** Extracts only sysroot/ from the layers with GNU tar, in order, as the root of `dir`. */
export async function extractRepo(tars: Buffer[], dir: string): Promise<string> {
  mkdirSync(dir, { recursive: true });
  for (const t of tars) {
    await execa('tar', ['-x', '-C', dir, '--numeric-owner', '--same-owner', '-p', '--wildcards', 'sysroot*'], { input: t, reject: false })
      .then((r) => {
        // A layer without sysroot/ makes tar say "Not found in archive"; anything else is real.
        if (r.exitCode !== 0 && !/Not found in archive/.test(r.stderr)) throw new Error(`tar: ${r.stderr}`);
      });
  }
  return join(dir, 'sysroot/ostree/repo');
}

export async function fsck(repo: string): Promise<{ ok: boolean; output: string }> {
  const r = await execa('ostree', ['fsck', `--repo=${repo}`], { reject: false, all: true });
  return { ok: r.exitCode === 0, output: String(r.all) };
}

export async function checkout(repo: string, commit: string, dest: string): Promise<void> {
  await execa('ostree', ['checkout', `--repo=${repo}`, commit, dest]);
}

/**
 * A derived layer as `podman build` writes it for `FROM base` + RUN steps + `ostree container
 * commit`: whiteouts, an opaque directory, new /etc files, /var content, another top-level
 * directory, the empty /etc/hostname and /etc/resolv.conf, /run and /tmp content.
 */
export function derivedLayer(): Buffer {
  const t = new TarBuilder();
  const m = { mtime: 1_767_225_600 };
  t.dir('etc', m).file('etc/kubelet.conf', 'kubelet config\n', m).file('etc/hostname', '', m).file('etc/resolv.conf', '', m);
  t.file('etc/ssh/.wh.sshd_config', '', m);
  t.dir('usr/bin', m).file('usr/bin/kubelet', 'kubelet\n', { ...m, mode: 0o755, xattrs: { 'user.origin': 'derived' } });
  t.file('usr/bin/.wh.su', '', m);
  t.dir('usr/share/data', m).file('usr/share/data/.wh..wh..opq', '', m).file('usr/share/data/only', 'only survivor\n', m);
  t.dir('var', m).dir('var/lib', m).dir('var/lib/kubelet', { ...m, mode: 0o700 }).file('var/lib/kubelet/config.yaml', 'kind: KubeletConfiguration\n', m);
  t.dir('var/tmp', { ...m, mode: 0o1777 });
  t.dir('opt', m).dir('opt/vendor', m).file('opt/vendor/tool', 'vendor\n', m);
  t.dir('root', m).file('root/.bash_history', 'ls\n', m);
  t.dir('run', m).file('run/build.lock', '', m);
  t.dir('tmp', { ...m, mode: 0o1777 }).file('tmp/scratch', 'x\n', m);
  return t.end();
}
