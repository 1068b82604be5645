// Shared setup of the pivot e2e scenarios: one registry, the node image pushed once, and a way to
// install node-image-pivot into a machine the way Ignition would (binary under /usr/local, config,
// generator and units under /etc).
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readdirSync, symlinkSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureRootfs, REPO_ROOT } from '../../scripts/testbed/rootfs.ts';
import { startRegistry, type RunningRegistry, type StartRegistryOptions } from '../helpers/registry.ts';
import { buildAndPushNodeImage, probeUnit, type PushedNodeImage } from '../helpers/node-image.ts';
import { buildOciLayout, gzip, pushLayout, simpleTar, OCI_LAYER_GZIP } from '../helpers/oci-image.ts';

export const LOCAL_MOTD = 'local motd written by Ignition\n';
export const BOOTED_MODULES = 'usr/lib/modules/booted-kernel';

export interface PivotFixture {
  registry: RunningRegistry;
  image: PushedNodeImage;
  conflictImage: PushedNodeImage;
  /** A release image whose image-references name `image` as rhel-coreos. */
  releaseRef: string;
  workDir: string;
  cleanup(): Promise<void>;
}

export async function setUpPivotFixture(registryOpts: StartRegistryOptions = {}): Promise<PivotFixture> {
  const { tree } = await ensureRootfs();
  const workDir = mkdtempSync(join(tmpdir(), 'nip-e2e-'));
  const registry = await startRegistry(registryOpts);
  try {
    const image = await buildAndPushNodeImage({ tree, layoutDir: join(workDir, 'layout'), registryHost: registry.host });
    // Upstream turns /etc/nip-conflict into a directory while the node changed the file locally.
    const conflictImage = await buildAndPushNodeImage({
      tree, layoutDir: join(workDir, 'layout-conflict'), registryHost: registry.host, version: '4.20.0-conflict',
      extraEntries: [
        { type: 'dir', name: 'etc/nip-conflict' },
        { type: 'file', name: 'etc/nip-conflict/now-a-dir.conf', body: 'upstream\n' },
      ],
    });
    const releaseRef = await pushReleaseImage(registry.host, image.ref, join(workDir, 'layout-release'));
    return {
      registry, image, conflictImage, releaseRef, workDir,
      async cleanup() {
        await registry.stop();
        rmSync(workDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await registry.stop();
    rmSync(workDir, { recursive: true, force: true });
    throw err;
  }
}

/** A minimal OpenShift release image: a bulky lower layer and release-manifests on top. */
async function pushReleaseImage(host: string, nodeRef: string, layoutDir: string): Promise<string> {
  const imageStream = JSON.stringify({
    kind: 'ImageStream', apiVersion: 'image.openshift.io/v1', metadata: { name: '4.20.0-e2e' },
    spec: { tags: [
      { name: 'cli', from: { kind: 'DockerImage', name: `${host}/openshift/cli@sha256:${'c'.repeat(64)}` } },
      { name: 'rhel-coreos', from: { kind: 'DockerImage', name: nodeRef } },
    ] },
  });
  const img = await buildOciLayout(layoutDir, { tag: '4.20.0-e2e', layers: [
    { data: await gzip(await simpleTar({ 'usr/bin/cluster-version-operator': Buffer.alloc(2_000_000, 7) })), mediaType: OCI_LAYER_GZIP },
    { data: await gzip(await simpleTar({ 'release-manifests/': '', 'release-manifests/image-references': imageStream })), mediaType: OCI_LAYER_GZIP },
  ] });
  await pushLayout(layoutDir, '4.20.0-e2e', host, 'openshift/release');
  return `${host}/openshift/release@${img.manifestDigest}`;
}

export interface InstallOptions {
  /** The node image; or give `config.releaseImage` and leave this empty. */
  image?: string;
  registryHost: string;
  /** Install the generator (isolate mode). Service mode scenarios leave it out. */
  generator?: boolean;
  /** Extra config fields. */
  config?: Record<string, unknown>;
  /** Extra files under the guest root, path -> content. */
  files?: Record<string, string>;
}

function write(root: string, path: string, content: string, mode = 0o644): void {
  const abs = join(root, path);
  mkdirSync(join(abs, '..'), { recursive: true });
  writeFileSync(abs, content, { mode });
  chmodSync(abs, mode);
}

/** Writes what an installer's Ignition config would, plus the e2e's boot-image fixtures. */
export function installInto(root: string, opts: InstallOptions): void {
  const units = join(REPO_ROOT, 'units');
  for (const name of readdirSync(units)) {
    if (name.endsWith('-generator')) {
      if (opts.generator !== false) {
        mkdirSync(join(root, 'etc/systemd/system-generators'), { recursive: true });
        copyFileSync(join(units, name), join(root, 'etc/systemd/system-generators', name));
        chmodSync(join(root, 'etc/systemd/system-generators', name), 0o755);
      }
    } else if (/\.(service|target)$/.test(name)) {
      copyFileSync(join(units, name), join(root, 'etc/systemd/system', name));
    }
  }
  // The e2e-delta project runs every scenario again with delta staging (vitest.config.ts).
  const staging = process.env.NODE_IMAGE_PIVOT_E2E_STAGING;
  write(root, 'etc/node-image-pivot/config.json', `${JSON.stringify({ ...(opts.image ? { image: opts.image } : {}), ...(staging ? { staging } : {}), ...opts.config }, null, 2)}\n`);
  write(root, 'etc/containers/registries.conf', `[[registry]]\nlocation = "${opts.registryHost}"\ninsecure = true\n`);
  // Boot-image side of the "unit present in both images" check, enabled by a local /etc link.
  write(root, 'usr/lib/systemd/system/nip-probe.service', probeUnit('old'));
  mkdirSync(join(root, 'etc/systemd/system/multi-user.target.wants'), { recursive: true });
  symlinkSync('/usr/lib/systemd/system/nip-probe.service', join(root, 'etc/systemd/system/multi-user.target.wants/nip-probe.service'));
  write(root, `${BOOTED_MODULES}/marker`, 'booted modules\n');
  // A local edit of a default (motd is in /usr/etc too): it must survive the merge.
  write(root, 'etc/motd', LOCAL_MOTD);
  // Quick restarts so the "registry down" scenario does not wait long.
  write(root, 'etc/systemd/system/node-image-pivot.service.d/90-e2e.conf', '[Service]\nRestartSec=2s\n');
  for (const [path, content] of Object.entries(opts.files ?? {})) write(root, path.replace(/^\//, ''), content);
}
