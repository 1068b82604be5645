// The VM test bed's boot image: Debian 12 with its own kernel, Debian's refpolicy enforcing,
// shaped like a CoreOS live ISO (see guest/finalize.sh and guest/nip-live.boot), labelled with
// setfiles and packed as a squashfs. Built once with mmdebstrap and cached.
//
// Cache layout (under $NODE_IMAGE_PIVOT_TESTBED_CACHE or .cache/testbed/), keyed by a hash of
// the recipe (package list + every file in guest/):
//   vm-KEY/tree/           the labelled root before packing (read-only for everyone: the node
//                          image fixture builds on it)
//   vm-KEY/base.squashfs   that tree, packed uncompressed (TCG pays for every decompression)
//   vm-KEY/vmlinuz, vm-KEY/initrd.img   the image's own kernel and initramfs, for -kernel/-initrd
//   vm-KEY/.complete       written last
//   vm.lock                held while building
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { withLock } from '../lock.ts';
import { cacheDir } from '../rootfs.ts';

export const GUEST_DIR = join(import.meta.dirname, 'guest');

/**
 * Everything that decides the image's contents besides guest/. openssh-server: the pivot's
 * refresh try-restarts sshd (restartUnits' default). setools (seinfo, sesearch), auditd
 * (ausearch) and procps (ps -Z) are for the tests' assertions in the guest.
 */
export const VM_RECIPE = {
  suite: 'bookworm',
  variant: 'minbase',
  mirror: 'http://deb.debian.org/debian',
  packages: [
    'linux-image-amd64', 'initramfs-tools', 'systemd', 'systemd-sysv', 'dbus', 'udev', 'kmod',
    'selinux-policy-default', 'selinux-basics', 'selinux-utils', 'policycoreutils', 'auditd', 'setools',
    'libstdc++6', 'util-linux', 'iproute2', 'procps', 'openssh-server',
  ],
  version: 1,
} as const;

const GUEST_FILES = ['finalize.sh', 'nip-live.boot'];

export function vmImageKey(): string {
  const h = createHash('sha256').update(JSON.stringify(VM_RECIPE));
  for (const f of GUEST_FILES) h.update(`\0${f}\0`).update(readFileSync(join(GUEST_DIR, f)));
  return h.digest('hex').slice(0, 16);
}

export interface VmImage {
  key: string;
  dir: string;
  /** The labelled tree the squashfs was packed from. Never write into it. */
  tree: string;
  squashfs: string;
  kernel: string;
  initrd: string;
  /** The image's file_contexts (for labelling provisioning layers and node image trees). */
  fileContexts: string;
  packages: readonly string[];
  /** Seconds spent building in this call (0 when cached). */
  buildSeconds: number;
}

export function vmImagePaths(key = vmImageKey()): Omit<VmImage, 'buildSeconds'> {
  const dir = join(cacheDir(), `vm-${key}`);
  const tree = join(dir, 'tree');
  return {
    key, dir, tree,
    squashfs: join(dir, 'base.squashfs'),
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initrd.img'),
    fileContexts: join(tree, 'etc/selinux/default/contexts/files/file_contexts'),
    packages: VM_RECIPE.packages,
  };
}

type Say = (line: string) => void;

/** Labels `tree` with the image's own policy, as if it were the root (works without SELinux on the host). */
export async function labelTree(tree: string, fileContexts: string): Promise<void> {
  await execa('setfiles', ['-F', '-r', tree, fileContexts, tree]);
}

/** Packs `tree` into a squashfs that keeps ownership, modes and security.selinux xattrs. */
export async function packSquashfs(tree: string, out: string, compress = false): Promise<void> {
  const comp = compress ? ['-comp', 'zstd'] : ['-noI', '-noId', '-noD', '-noF', '-noX'];
  await execa('mksquashfs', [tree, out, '-noappend', '-no-progress', '-quiet', '-xattrs', ...comp]);
}

async function build(p: Omit<VmImage, 'buildSeconds'>, say: Say): Promise<void> {
  const work = `${p.dir}.build-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  const tree = join(work, 'tree');
  say(`testbed-vm: building image ${p.key} with mmdebstrap (${VM_RECIPE.packages.join(',')})`);
  try {
    await execa('mmdebstrap', [
      '--quiet',
      `--variant=${VM_RECIPE.variant}`,
      '--aptopt=APT::Install-Recommends "false"',
      `--include=${VM_RECIPE.packages.join(',')}`,
      `--customize-hook=sh ${join(GUEST_DIR, 'finalize.sh')} "$1" ${GUEST_DIR}`,
      VM_RECIPE.suite,
      tree,
      VM_RECIPE.mirror,
    ], { stdio: ['ignore', 'inherit', 'inherit'] });
    const boot = readdirSync(join(tree, 'boot'));
    const vmlinuz = boot.find((f) => f.startsWith('vmlinuz-'));
    const initrd = boot.find((f) => f.startsWith('initrd.img-'));
    if (!vmlinuz || !initrd) throw new Error(`no kernel/initrd in ${tree}/boot: ${boot.join(' ')}`);
    copyFileSync(join(tree, 'boot', vmlinuz), join(work, 'vmlinuz'));
    copyFileSync(join(tree, 'boot', initrd), join(work, 'initrd.img'));
    await labelTree(tree, join(tree, 'etc/selinux/default/contexts/files/file_contexts'));
    await packSquashfs(tree, join(work, 'base.squashfs'));
    writeFileSync(join(work, '.complete'), `${p.key}\n`);
    rmSync(p.dir, { recursive: true, force: true });
    renameSync(work, p.dir);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Removes images of other recipe versions (1-2 GB each), unless a running qemu still reads one. */
function pruneOtherKeys(key: string): void {
  const dir = cacheDir();
  let busy = '';
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      busy += readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      // exited
    }
  }
  for (const name of readdirSync(dir)) {
    const m = /^vm-([0-9a-f]{16})$/.exec(name);
    if (!m || m[1] === key || busy.includes(join(dir, name))) continue;
    rmSync(join(dir, name), { recursive: true, force: true });
  }
}

/** Makes sure the cached image exists; builds it under a lock shared by all test processes. */
export async function ensureVmImage(opts: { force?: boolean; say?: Say } = {}): Promise<VmImage> {
  const say = opts.say ?? ((line: string) => process.stderr.write(`${line}\n`));
  const p = vmImagePaths();
  const ready = () => existsSync(join(p.dir, '.complete'));
  if (!opts.force && ready()) return { ...p, buildSeconds: 0 };
  mkdirSync(cacheDir(), { recursive: true });
  return withLock(join(cacheDir(), 'vm.lock'), async () => {
    const t0 = performance.now();
    if (opts.force || !ready()) await build(p, say);
    pruneOtherKeys(p.key);
    const buildSeconds = (performance.now() - t0) / 1000;
    if (buildSeconds > 1) say(`testbed-vm: image ${p.key} ready in ${buildSeconds.toFixed(0)} s`);
    return { ...p, buildSeconds };
  }, 30 * 60_000);
}
