// The pivot on an ostree-native node image, as production pulls rhel-coreos: the test bed's /usr
// committed with real ostree, exported as ostree-ext does (commit layer + chunk layers, xattrs in
// .file-xattrs-link objects, /usr/etc as etc), with a podman-build-style node layer on top.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureRootfs } from '../../scripts/testbed/rootfs.ts';
import { bootMachine, type Machine } from '../../scripts/testbed/machine.ts';
import { KUBELET_MARKER, NODE_VERSION_FILE, nodeLayerEntries } from '../helpers/node-image.ts';
import { pushLayout } from '../helpers/oci-image.ts';
import { buildOstreeImage, commitTree, type OstreeImage } from '../helpers/ostree-image.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { TarBuilder } from '../helpers/tar-builder.ts';
import { installInto } from './pivot-fixture.ts';

const VERSION = '4.20.0-ostree';
let registry: RunningRegistry;
let work: string;
let img: OstreeImage;
let ref: string;
let machine: Machine | undefined;

/** The node layer of node-image.ts plus what `podman build` leaves: empty hostname/resolv.conf, /var, /opt. */
function derivedNodeLayer(): Buffer {
  const t = new TarBuilder();
  const m = { mtime: 1_767_225_600 };
  for (const e of nodeLayerEntries(VERSION)) {
    if (e.type === 'dir') t.dir(e.name, { ...m, mode: e.mode ?? 0o755 });
    else if (e.type === 'symlink') t.symlink(e.name, e.target, m);
    else t.file(e.name, e.body, { ...m, mode: e.mode ?? 0o644 });
  }
  t.file('etc/hostname', '', m).file('etc/resolv.conf', '', m);
  t.dir('var', m).dir('var/lib', m).dir('var/lib/node-layer', m).file('var/lib/node-layer/seed', 'from the image\n', m);
  t.dir('opt', m).dir('opt/vendor', m).file('opt/vendor/tool', 'vendor\n', m);
  return t.end();
}

beforeAll(async () => {
  const { tree } = await ensureRootfs();
  work = mkdtempSync(join(tmpdir(), 'nip-e2e-ostree-'));
  registry = await startRegistry();
  // The commit: the boot image's /usr with its /etc as /usr/etc, as an ostree commit has it.
  const src = join(work, 'tree');
  mkdirSync(src);
  await execa('cp', ['-a', join(tree, 'usr'), join(src, 'usr')]);
  rmSync(join(src, 'usr/etc'), { recursive: true, force: true });
  await execa('cp', ['-a', join(tree, 'etc'), join(src, 'usr/etc')]);
  const commit = await commitTree(src, work, { version: VERSION });
  rmSync(src, { recursive: true, force: true });
  img = await buildOstreeImage(join(work, 'layout'), commit, { chunks: 16, xattrsLink: 'file', derived: [derivedNodeLayer()], version: VERSION, tag: VERSION });
  await pushLayout(img.layoutDir, VERSION, registry.host, 'openshift/node-ostree');
  ref = `${registry.host}/openshift/node-ostree@${img.manifestDigest}`;
});

afterAll(async () => {
  await machine?.dispose().catch(() => undefined);
  await registry?.stop();
  if (work) rmSync(work, { recursive: true, force: true });
});

async function sh(m: Machine, script: string): Promise<string> {
  return (await m.exec(['sh', '-c', script], { direct: true })).stdout;
}

describe('pivot e2e, ostree-native node image', () => {
  it('pivots onto the ostree-native image with its derived layer and shows its ostree commit', async () => {
    machine = await bootMachine({ name: 'pivot-ostree', prepare: (root) => installInto(root, { image: ref, registryHost: registry.host }) });
    const m = machine;
    await m.waitForUnit('multi-user.target', 'active', 300_000);
    await m.waitForUnit('kubelet.service', 'active', 60_000);
    expect((await sh(m, `cat ${NODE_VERSION_FILE}`)).trim()).toBe(VERSION);
    expect(await sh(m, `cat ${KUBELET_MARKER}`)).toMatch(new RegExp(`^kubelet ${VERSION.replace(/\./g, '\\.')} as \\d+`));
    // Derived etc/ arrived through usr/etc and the merge; the empty build leftovers did not.
    expect(await sh(m, 'cat /etc/issue')).toMatch(new RegExp(`^Node image ${VERSION.replace(/\./g, '\\.')}`));
    expect(await sh(m, 'test -e /etc/issue.net && echo present || echo absent')).toBe('absent\n');
    expect(await sh(m, 'test -e /usr/etc/hostname && echo present || echo absent')).toBe('absent\n');
    // Derived var/ is at /usr/share/factory/var; /opt from the layer is dropped.
    expect(await sh(m, 'cat /usr/share/factory/var/lib/node-layer/seed')).toBe('from the image\n');
    // ... and the refresh phase's systemd-tmpfiles --create seeded the node's /var from it.
    expect(await sh(m, 'cat /var/lib/node-layer/seed')).toBe('from the image\n');
    expect(await sh(m, 'test -e /usr/opt && echo present || echo absent')).toBe('absent\n');
    const status = JSON.parse((await m.exec(['/usr/local/bin/node-image-pivot', 'status', '--json'])).stdout) as {
      state: { result: string; phases: Array<{ name: string; facts?: Record<string, unknown> }> };
    };
    expect(status.state.result).toBe('done');
    const pull = status.state.phases.find((p) => p.name === 'pull');
    expect(pull?.facts).toMatchObject({ ostreeCommit: img.commit.commit, imageVersion: VERSION, derivedLayers: 1, filtered: { opt: 3 } });
    const text = (await m.exec(['/usr/local/bin/node-image-pivot', 'status'])).stdout;
    expect(text).toContain(`os: version ${VERSION}, ostree commit ${img.commit.commit}`);
    await m.poweroff();
  });
});
