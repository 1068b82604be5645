// resolve against a real registry: the pullspec comes from release-manifests/image-references,
// only the layers down to the one holding it are read, that one whole (byte count asserted), a missing
// component lists the ones that exist, and an image without the file says it is no release.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveComponent } from '../../src/registry/index.ts';
import { componentPullspec } from '../../src/registry/release.ts';
import { buildOciLayout, gzip, zstd, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, pushLayout, simpleTar } from '../helpers/oci-image.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { insecureConf, runCli } from './util.ts';

const COREOS = 'quay.io/openshift-release-dev/ocp-v4.0-art-dev@sha256:' + 'a'.repeat(64);
const imageStream = JSON.stringify({
  kind: 'ImageStream',
  apiVersion: 'image.openshift.io/v1',
  spec: {
    tags: [
      { name: 'cli', from: { kind: 'DockerImage', name: 'quay.io/x/cli@sha256:' + 'b'.repeat(64) } },
      { name: 'rhel-coreos', from: { kind: 'DockerImage', name: COREOS } },
      { name: 'machine-config-operator', from: { kind: 'DockerImage', name: 'quay.io/x/mco@sha256:' + 'c'.repeat(64) } },
    ],
  },
});

let tmp: string;
let reg: RunningRegistry;
let conf: string;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'nip-resolve-'));
  reg = await startRegistry();
  conf = insecureConf(tmp, [reg.host]);
  // Random bytes do not compress: the lower layers dominate the image size, as in a real release.
  const bulky = await gzip(await simpleTar({ 'usr/bin/oc': randomBytes(3_000_000) }), 1);
  const more = await zstd(await simpleTar({ 'usr/share/blob': randomBytes(1_000_000) }));
  const manifests = await gzip(await simpleTar({ 'release-manifests/': '', 'release-manifests/image-references': imageStream, 'release-manifests/release-metadata': '{}' }));
  const top = await buildOciLayout(join(tmp, 'rel'), { tag: 'rel', layers: [
    { data: bulky, mediaType: OCI_LAYER_GZIP }, { data: more, mediaType: OCI_LAYER_ZSTD }, { data: manifests, mediaType: OCI_LAYER_GZIP },
  ] });
  await pushLayout(top.layoutDir, 'rel', reg.host, 'ocp/release');
  // The file one layer down, under a top layer that does not have it.
  const lower = await buildOciLayout(join(tmp, 'rel2'), { tag: 'rel2', layers: [
    { data: bulky, mediaType: OCI_LAYER_GZIP }, { data: manifests, mediaType: OCI_LAYER_GZIP }, { data: await gzip(await simpleTar({ 'etc/motd': 'hi' })), mediaType: OCI_LAYER_GZIP },
  ] });
  await pushLayout(lower.layoutDir, 'rel2', reg.host, 'ocp/release');
  // The file first in a big top layer: the download stops mid-layer.
  const early = await buildOciLayout(join(tmp, 'rel3'), { tag: 'rel3', layers: [
    { data: await gzip(await simpleTar({ 'release-manifests/image-references': imageStream, 'usr/lib/big': randomBytes(4_000_000) }), 1), mediaType: OCI_LAYER_GZIP },
  ] });
  await pushLayout(early.layoutDir, 'rel3', reg.host, 'ocp/release');
  const none = await buildOciLayout(join(tmp, 'plain'), { tag: 'plain', layers: [{ data: await gzip(await simpleTar({ a: 'b' })), mediaType: OCI_LAYER_GZIP }] });
  await pushLayout(none.layoutDir, 'plain', reg.host, 'ocp/plain');
});
afterAll(async () => {
  await reg?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe('resolve', () => {
  it('prints the pullspec and reads only the top layer', async () => {
    const r = runCli(['resolve', `${reg.host}/ocp/release:rel`, '--registries-conf', conf, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.pullspec).toBe(COREOS);
    expect(out.imageBytes).toBeGreaterThan(4_000_000);
    // Config + the small top layer; not the 4 MB below it.
    expect(out.bytesFetched).toBeLessThan(out.imageBytes / 20);
    const plain = runCli(['resolve', `${reg.host}/ocp/release:rel`, '--registries-conf', conf]);
    expect(plain.stdout).toBe(`${COREOS}\n`);
  });

  it('finds the file in a lower layer and stops there', async () => {
    const r = await resolveComponent(`${reg.host}/ocp/release:rel2`, 'machine-config-operator', { registriesConf: conf });
    expect(r.pullspec).toMatch(/mco@sha256:c{64}$/);
    expect(r.bytesFetched).toBeLessThan(r.imageBytes / 10);
  });

  it('reads the layer holding the file to its end (through the digest check), however early the file comes', async () => {
    const r = await resolveComponent(`${reg.host}/ocp/release:rel3`, 'rhel-coreos', { registriesConf: conf });
    expect(r.pullspec).toBe(COREOS);
    expect(r.imageBytes).toBeGreaterThan(4_000_000);
    // The one layer, all of it, and the config.
    expect(r.bytesFetched).toBeGreaterThanOrEqual(r.imageBytes);
    expect(r.bytesFetched).toBeLessThan(r.imageBytes + 4096);
  });

  it('lists the existing components when the one asked for is missing (exit 2)', () => {
    const r = runCli(['resolve', `${reg.host}/ocp/release:rel`, '--registries-conf', conf, '--component', 'rhcos']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/release image has no component "rhcos"; it has: cli, machine-config-operator, rhel-coreos/);
  });

  it('says an image without image-references is not a release image (exit 3)', () => {
    const r = runCli(['resolve', `${reg.host}/ocp/plain:plain`, '--registries-conf', conf]);
    expect(r.code).toBe(3);
    expect(r.errorLine).toMatch(/has no release-manifests\/image-references; it is not a release image/);
  });

  it('stops at the registry.resolve failpoint', () => {
    const r = runCli(['resolve', `${reg.host}/ocp/release:rel`, '--registries-conf', conf], { NODE_IMAGE_PIVOT_FAILPOINTS: 'registry.resolve:exit=42' });
    expect(r.code).toBe(42);
  });

  it('componentPullspec rejects a document that is not an ImageStream', () => {
    expect(() => componentPullspec({ kind: 'ConfigMap' }, 'x', 'f')).toThrow(/not an ImageStream/);
  });
});
