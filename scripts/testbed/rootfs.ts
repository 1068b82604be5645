// The boot image of the test bed: a Debian 12 rootfs with systemd, shaped like a CoreOS boot
// image, built once with mmdebstrap and cached.
//
// Cache layout (under .cache/testbed/, gitignored), keyed by a hash of the recipe below:
//   rootfs-KEY.tar.zst   the built image; survives between runs and can be kept by CI
//   rootfs-KEY/          the tree extracted from it, used read-only as the overlay lower dir of
//                        every machine (each machine gets its own upper); `.complete` marks a
//                        finished extraction
//   rootfs.lock          held while building or extracting, so parallel test files build once
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, renameSync, writeFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { withLock } from './lock.ts';

export const REPO_ROOT = resolve(import.meta.dirname, '..', '..');

/**
 * Everything that decides the image's contents. Change anything here and the key changes, so a
 * stale cache is never used. openssh-server is in because the pivot target wants sshd.service and
 * the pivot's refresh try-restarts it (restartUnits' default); it costs about 6 MB.
 */
export const RECIPE = {
  suite: 'bookworm',
  variant: 'minbase',
  mirror: 'http://deb.debian.org/debian',
  packages: ['systemd', 'systemd-sysv', 'dbus', 'libstdc++6', 'util-linux', 'iproute2', 'openssh-server'],
  // The CoreOS shape, applied after mmdebstrap. Runs with the tree as $1.
  finalize: `set -eu
root="$1"
# /usr/local lives in /var on CoreOS, so what Ignition installs there survives a /usr swap.
mkdir -p "$root/var/usrlocal"
cp -a "$root/usr/local/." "$root/var/usrlocal/"
rm -rf "$root/usr/local"
ln -s ../var/usrlocal "$root/usr/local"
mkdir -p "$root/var/usrlocal/bin"
# A node boots to multi-user.target, as CoreOS does (Debian's default is graphical.target).
ln -sfn /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
# Persistent journal: the host reads it from the machine's overlay upper dir.
mkdir -p "$root/var/log/journal"
echo nip-testbed > "$root/etc/hostname"
# An empty machine-id: every boot gets a fresh transient one, as a first boot does.
: > "$root/etc/machine-id"
# No login prompt on the nspawn console; sshd and machinectl-free nsenter are the way in.
ln -sfn /dev/null "$root/etc/systemd/system/console-getty.service"
# sshd listens where the test bed tells it (a per-machine loopback port, see machine.ts),
# never on the host's :22, because the machine shares the host's network.
mkdir -p "$root/etc/ssh/sshd_config.d"
printf 'ListenAddress 127.0.0.1:2222\\nPermitRootLogin prohibit-password\\n' > "$root/etc/ssh/sshd_config.d/10-testbed.conf"
# Last: the pristine /etc as ostree keeps it, the base of the 3-way /etc merge.
rm -rf "$root/usr/etc"
cp -a "$root/etc" "$root/usr/etc"
`,
  version: 1,
} as const;

export function rootfsKey(recipe: typeof RECIPE = RECIPE): string {
  return createHash('sha256').update(JSON.stringify(recipe)).digest('hex').slice(0, 16);
}

export function cacheDir(): string {
  return process.env.NODE_IMAGE_PIVOT_TESTBED_CACHE ?? join(REPO_ROOT, '.cache', 'testbed');
}

export interface RootfsPaths {
  key: string;
  tarball: string;
  tree: string;
  stamp: string;
}

export function rootfsPaths(key = rootfsKey()): RootfsPaths {
  const dir = cacheDir();
  const tree = join(dir, `rootfs-${key}`);
  return { key, tarball: join(dir, `rootfs-${key}.tar.zst`), tree, stamp: join(tree, '.complete') };
}

export interface BuildReport {
  tarball: string;
  tree: string;
  built: boolean;
  extracted: boolean;
  seconds: number;
}

type Say = (line: string) => void;

async function buildTarball(p: RootfsPaths, say: Say): Promise<void> {
  const work = `${p.tree}.build-${process.pid}`;
  rmSync(work, { recursive: true, force: true });
  say(`testbed: building rootfs ${p.key} with mmdebstrap (${RECIPE.packages.join(',')})`);
  try {
    await execa('mmdebstrap', [
      '--quiet',
      `--variant=${RECIPE.variant}`,
      `--include=${RECIPE.packages.join(',')}`,
      RECIPE.suite,
      work,
      RECIPE.mirror,
    ], { stdio: ['ignore', 'inherit', 'inherit'] });
    await execa('sh', ['-c', RECIPE.finalize, 'finalize', work], { stdio: ['ignore', 'inherit', 'inherit'] });
    const tmp = `${p.tarball}.tmp-${process.pid}`;
    await execa('tar', ['--zstd', '--numeric-owner', '--xattrs', '--xattrs-include=*', '-C', work, '-cpf', tmp, '.']);
    renameSync(tmp, p.tarball);
    // The freshly built tree is exactly what extraction would produce: keep it as the lower dir.
    rmSync(p.tree, { recursive: true, force: true });
    renameSync(work, p.tree);
    writeFileSync(p.stamp, `${p.key}\n`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

async function extractTree(p: RootfsPaths, say: Say): Promise<void> {
  say(`testbed: extracting ${p.tarball}`);
  const tmp = `${p.tree}.extract-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    await execa('tar', ['--zstd', '--numeric-owner', '--xattrs', '--xattrs-include=*', '-C', tmp, '-xpf', p.tarball]);
    rmSync(p.tree, { recursive: true, force: true });
    renameSync(tmp, p.tree);
    writeFileSync(p.stamp, `${p.key}\n`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/**
 * Removes trees and tarballs of other recipe versions, which are dead weight (300 MB each), unless
 * a machine of another process still uses that tree as its overlay lower dir.
 */
function pruneOtherKeys(key: string): void {
  const dir = cacheDir();
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8');
  for (const name of readdirSync(dir)) {
    const m = /^rootfs-([0-9a-f]{16})(\.tar\.zst)?$/.exec(name);
    if (!m || m[1] === key) continue;
    if (!m[2] && mounts.includes(`lowerdir=${join(dir, name)}`)) continue;
    rmSync(join(dir, name), { recursive: true, force: true });
  }
}

/**
 * Makes sure the cached rootfs exists and is extracted; returns its paths. Safe to call from
 * many processes at once: the first builds, the rest wait on the lock and find it done.
 */
export async function ensureRootfs(opts: { force?: boolean; say?: Say } = {}): Promise<BuildReport> {
  const say = opts.say ?? ((line: string) => process.stderr.write(`${line}\n`));
  const p = rootfsPaths();
  const t0 = performance.now();
  const ready = () => existsSync(p.stamp) && existsSync(p.tarball);
  if (!opts.force && ready()) return { tarball: p.tarball, tree: p.tree, built: false, extracted: false, seconds: 0 };
  mkdirSync(cacheDir(), { recursive: true });
  return withLock(join(cacheDir(), 'rootfs.lock'), async () => {
    let built = false;
    let extracted = false;
    if (opts.force || !existsSync(p.tarball)) {
      await buildTarball(p, say);
      built = true;
    } else if (!existsSync(p.stamp)) {
      await extractTree(p, say);
      extracted = true;
    }
    pruneOtherKeys(p.key);
    const seconds = (performance.now() - t0) / 1000;
    if (built || extracted) {
      const mb = (statSync(p.tarball).size / 1e6).toFixed(0);
      say(`testbed: rootfs ${p.key} ready in ${seconds.toFixed(1)} s (${mb} MB compressed)`);
    }
    return { tarball: p.tarball, tree: p.tree, built, extracted, seconds };
  });
}
