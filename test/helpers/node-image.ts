// The e2e node image: the test bed's boot image plus a "node layer", the way RHCOS splits them.
// It replaces the whole /usr, so its first layer is the boot image's own usr/ and etc/ (ostree
// exports /usr/etc as /etc); the second layer is what the node layer adds or changes:
//   /usr/bin/kubelet + kubelet.service (enabled statically from /usr), which writes a marker
//   nip-probe.service, a unit present in both images, with a new ExecStart
//   a new system user from sysusers.d
//   /etc/issue changed upstream, /etc/issue.net removed upstream (a whiteout)
//   /usr/lib/modules/node-kernel, which must stay hidden behind the booted modules
import { existsSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { pack } from 'tar-stream';
import { buildOciLayout, gzip, pushLayout, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, type BuiltImage } from './oci-image.ts';
import { cacheDir, rootfsKey } from '../../scripts/testbed/rootfs.ts';

export const NODE_VERSION_FILE = '/usr/lib/nip-node-image-version';
export const KUBELET_MARKER = '/var/lib/nip/kubelet-marker';
export const PROBE_MARKER = '/var/lib/nip/probe-marker';
export const NODE_USER = 'nipkube';

type Entry =
  | { type: 'file'; name: string; body: string | Buffer; mode?: number }
  | { type: 'dir'; name: string; mode?: number }
  | { type: 'symlink'; name: string; target: string };

export function probeUnit(version: 'old' | 'new'): string {
  return [
    '[Unit]',
    'Description=probe whose definition differs between the boot and node images',
    '[Service]',
    'Type=oneshot',
    'RemainAfterExit=yes',
    `ExecStart=/bin/sh -c 'mkdir -p /var/lib/nip && echo ${version} > ${PROBE_MARKER}'`,
    '[Install]',
    'WantedBy=multi-user.target',
    '',
  ].join('\n');
}

export function nodeLayerEntries(version: string): Entry[] {
  return [
    { type: 'dir', name: 'usr/bin' },
    {
      type: 'file', name: 'usr/bin/kubelet', mode: 0o755,
      body: `#!/bin/sh\nmkdir -p /var/lib/nip\necho "kubelet ${version} as $(id -u nipkube 2>/dev/null || echo nouser)" > ${KUBELET_MARKER}\n`,
    },
    {
      type: 'file', name: 'usr/lib/systemd/system/kubelet.service',
      body: '[Unit]\nDescription=kubelet (node image only)\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/bin/kubelet\n',
    },
    { type: 'dir', name: 'usr/lib/systemd/system/multi-user.target.wants' },
    { type: 'symlink', name: 'usr/lib/systemd/system/multi-user.target.wants/kubelet.service', target: '../kubelet.service' },
    { type: 'file', name: 'usr/lib/systemd/system/nip-probe.service', body: probeUnit('new') },
    { type: 'file', name: 'usr/lib/sysusers.d/nip-kubelet.conf', body: `u ${NODE_USER} - "node image test user" /var/lib/nip\n` },
    { type: 'file', name: NODE_VERSION_FILE.slice(1), body: `${version}\n` },
    { type: 'dir', name: 'usr/lib/modules/node-kernel' },
    { type: 'file', name: 'usr/lib/modules/node-kernel/marker', body: 'node image modules\n' },
    { type: 'file', name: 'etc/issue', body: `Node image ${version} \\n \\l\n` },
    { type: 'file', name: 'etc/.wh.issue.net', body: '' },
  ];
}

export async function tarOf(entries: Entry[]): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    p.on('end', resolve);
    p.on('error', reject);
  });
  const mtime = new Date('2026-01-01T00:00:00Z');
  for (const e of entries) {
    if (e.type === 'dir') p.entry({ name: e.name, type: 'directory', mode: e.mode ?? 0o755, mtime });
    else if (e.type === 'symlink') p.entry({ name: e.name, type: 'symlink', linkname: e.target, mode: 0o777, mtime });
    else p.entry({ name: e.name, mode: e.mode ?? 0o644, mtime }, e.body);
  }
  p.finalize();
  await done;
  return Buffer.concat(chunks);
}

/**
 * The boot image's usr/ and etc/ as one zstd layer, cached beside the rootfs (same key): about
 * 60 MB, built once with GNU tar and zstd because that is seconds, not a minute, on 2 cores.
 */
export async function baseLayer(tree: string): Promise<Buffer> {
  const file = join(cacheDir(), `node-base-${rootfsKey()}.tar.zst`);
  if (!existsSync(file)) {
    const tmp = `${file}.tmp-${process.pid}`;
    await execa('sh', ['-c',
      'tar -C "$1" --numeric-owner --xattrs --xattrs-include="*" --exclude=./usr/etc -cf - ./usr ./etc | zstd -q -3 -T2 -o "$2"',
      'sh', tree, tmp]);
    renameSync(tmp, file);
  }
  return readFileSync(file);
}

export interface PushedNodeImage extends BuiltImage {
  /** host:port/repo@digest, as a config would name it. */
  ref: string;
  tagRef: string;
}

export async function buildAndPushNodeImage(opts: {
  tree: string;
  layoutDir: string;
  registryHost: string;
  repo?: string;
  version?: string;
  extraEntries?: Entry[];
}): Promise<PushedNodeImage> {
  const repo = opts.repo ?? 'openshift/node';
  const version = opts.version ?? '4.20.0-e2e';
  const node = await tarOf([...nodeLayerEntries(version), ...(opts.extraEntries ?? [])]);
  const img = await buildOciLayout(opts.layoutDir, {
    tag: version,
    layers: [
      { data: await baseLayer(opts.tree), mediaType: OCI_LAYER_ZSTD },
      { data: await gzip(node), mediaType: OCI_LAYER_GZIP },
    ],
  });
  await pushLayout(opts.layoutDir, version, opts.registryHost, repo);
  return { ...img, ref: `${opts.registryHost}/${repo}@${img.manifestDigest}`, tagRef: `${opts.registryHost}/${repo}:${version}` };
}
