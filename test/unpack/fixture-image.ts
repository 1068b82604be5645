// The ground-truth fixture image: five layers that exercise everything a node image can hold.
// Used by the umoci comparison (test/unpack/umoci.test.ts) and by the pull --dest test.
import { TarBuilder } from '../helpers/tar-builder.ts';
import { GZIP, TAR, ZSTD } from './util.ts';

export const CAP_NET_BIND = Buffer.from('0100000200040000000000000000000000000000', 'hex');
export const BINARY_XATTR = Buffer.from([0x00, 0xff, 0xfe, 0x0a, 0x3d, 0x20, 0xc3, 0x28, 0x00, 0x80, 0x00]);

const long255 = 'L'.repeat(255);
// ~3.8 KiB: with the temp dir in front it still fits Linux's 4096-byte PATH_MAX (see docs/unpack.md).
export const deepPath = Array.from({ length: 15 }, (_, i) => `${String(i).padStart(2, '0')}${'p'.repeat(250)}`).join('/');
const obj = (h: string): string => `sysroot/ostree/repo/objects/${h.slice(0, 2)}/${h.slice(2)}.file`;
const T = 1_650_000_000;

export interface FixtureLayer { tar: Buffer; mediaType: string }

export function fixtureLayers(): FixtureLayer[] {
  // Layer 1: an ostree-native base: objects stored once, hardlinked at their real paths.
  const l1 = new TarBuilder()
    .dir('./', { mode: 0o755, mtime: T })
    .dir('sysroot', { mtime: T }).dir('sysroot/ostree', { mtime: T }).dir('sysroot/ostree/repo', { mtime: T })
    .dir('sysroot/ostree/repo/objects', { mtime: T }).dir('sysroot/ostree/repo/objects/ab', { mtime: T }).dir('sysroot/ostree/repo/objects/cd', { mtime: T })
    .file(obj('ab01'), 'bash binary', { mode: 0o755, mtime: T })
    .file(obj('cd02'), 'ping binary', { mode: 0o755, mtime: T, xattrs: { 'security.capability': CAP_NET_BIND } })
    .file(obj('ab03'), 'sudo binary', { mode: 0o4111, mtime: T })
    .symlink('ostree', 'sysroot/ostree', { mtime: T })
    .dir('usr', { mtime: T }).dir('usr/bin', { mtime: T }).dir('usr/lib', { mtime: T }).dir('usr/etc', { mtime: T })
    .hardlink('usr/bin/bash', obj('ab01'))
    .hardlink('usr/bin/ping', obj('cd02'))
    .hardlink('usr/bin/sudo', obj('ab03'))
    .file('usr/lib/empty-marker', '', { mtime: T })
    .symlink('usr/bin/sh', 'bash', { mtime: T })
    .dir('etc', { mtime: T }).file('etc/os-release', 'ID=rhcos\n', { mtime: T }).file('etc/hosts', '127.0.0.1 localhost\n', { mtime: T })
    .dir('opt', { mtime: T }).dir('opt/app', { mtime: T }).file('opt/app/old1', 'old', { mtime: T }).dir('opt/app/sub', { mtime: T }).file('opt/app/sub/old2', 'old', { mtime: T })
    .file('usr/lib/shared', 'shared v1', { mode: 0o644, uid: 10, gid: 20, mtime: T })
    .end();
  // Layer 2: odd names, xattrs, ownership, setgid/sticky, a fifo and a device.
  const l2 = new TarBuilder()
    .file('usr/lib/with space', 'sp', { mtime: T + 1 }).file('usr/lib/new\nline', 'nl', { mtime: T + 1 })
    .file('usr/lib/ünïcødé ✓', 'utf8', { mtime: T + 1 }).file(`usr/lib/${long255}`, '255', { mtime: T + 1 })
    .file(`usr/lib/${deepPath}/deep`, 'deep', { mtime: T + 1 })
    .file(`usr/lib/gnu-${'g'.repeat(120)}`, 'gnu', { mtime: T + 1, gnuLong: true })
    .file('usr/lib/xattrs', 'x', { mtime: T + 1, uid: 1001, gid: 1002, mode: 0o2750, xattrs: { 'user.binary': BINARY_XATTR, 'user.text': 'hello', 'security.capability': CAP_NET_BIND } })
    .dir('tmp', { mode: 0o1777, mtime: T + 1 })
    .add({ name: 'run-fifo', type: 'fifo', mode: 0o600, mtime: T + 1 })
    .add({ name: 'dev-null', type: 'char', mode: 0o666, devmajor: 1, devminor: 3, mtime: T + 1 })
    .hardlink('usr/lib/shared-link', 'usr/lib/shared')
    .end();
  // Layer 3: whiteouts and an opaque directory; a hardlink into layer 1; type changes.
  const l3 = new TarBuilder()
    .whiteout('etc/hosts')
    .opaque('opt/app').file('opt/app/new', 'new', { mtime: T + 2 })
    .hardlink('usr/bin/bash-again', 'usr/bin/bash')
    .file('usr/lib/shared', 'shared v2', { mtime: T + 2 }) // replaces one name of the layer-2 hardlink pair
    .dir('usr/lib/with space', { mtime: T + 2 }) // file -> dir
    .file('usr/lib/with space/inside', 'in', { mtime: T + 2 })
    .symlink('etc/os-release', '../usr/lib/os-release', { mtime: T + 2 }) // file -> symlink
    .file('usr/lib/os-release', 'ID=rhcos\nVERSION=2\n', { mtime: T + 2 })
    .end();
  // Layer 4: more whiteouts (of a whole tree and of one hardlink name), re-adding a dir.
  const l4 = new TarBuilder()
    .whiteout(`usr/lib/${deepPath.split('/')[0]}`)
    .whiteout('usr/bin/bash-again')
    .whiteout('opt')
    .dir('opt', { mode: 0o700, mtime: T + 3 }).file('opt/fresh', 'fresh', { mtime: T + 3 })
    .file('usr/etc/kubelet.conf', 'conf', { mode: 0o600, mtime: T + 3 })
    .end();
  // Layer 5: symlink -> dir replacement and a setuid file owned by a user.
  const l5 = new TarBuilder()
    .dir('ostree', { mtime: T + 4 }).file('ostree/notalink', 'x', { mtime: T + 4 })
    .file('usr/bin/newgrp', 'n', { mode: 0o6755, uid: 0, gid: 0, mtime: T + 4 })
    .end();
  return [
    { tar: l1, mediaType: GZIP },
    { tar: l2, mediaType: ZSTD },
    { tar: l3, mediaType: TAR },
    { tar: l4, mediaType: GZIP },
    { tar: l5, mediaType: ZSTD },
  ];
}
