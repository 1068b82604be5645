// pull --oci-layout against a real docker-registry: the layout is standard (skopeo and umoci
// accept it) and carries the registry's exact digests; multi-arch picks one platform; a rerun
// uses the cache; bad input fails with one line and the right exit code, leaving no DIR behind.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import {
  buildOciIndex, buildOciLayout, gzip, zstd, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, pushLayout, simpleTar, PushClient, registryBlobPath,
  type BuiltImage, type BuiltIndex, sha256, OCI_MANIFEST, DOCKER_LAYER_GZIP,
} from '../helpers/oci-image.ts';
import { insecureConf, runCliAsync } from './util.ts';

let tmp: string;
let reg: RunningRegistry;
let conf: string;
let img: BuiltImage;
let multi: BuiltIndex;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'nip-pull-'));
  reg = await startRegistry();
  conf = insecureConf(tmp, [reg.host]);
  img = await buildOciLayout(join(tmp, 'src'), {
    tag: 'v1',
    layers: [
      { data: await gzip(await simpleTar({ 'usr/': '', 'usr/bin/': '', 'usr/bin/hello': '#!/bin/sh\necho hi\n' })), mediaType: OCI_LAYER_GZIP },
      // Debian's umoci cannot read zstd layers, so the interop image is gzip only.
      { data: await gzip(await simpleTar({ 'etc/': '', 'etc/os-release': 'ID=test\n' })), mediaType: OCI_LAYER_GZIP },
    ],
  });
  await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/app');
  const layer = (s: string) => simpleTar({ 'arch': s }).then((t) => gzip(t));
  multi = await buildOciIndex(join(tmp, 'multi'), {
    tag: 'multi',
    images: [
      { platform: { os: 'linux', architecture: 'amd64' }, layers: [{ data: await layer('amd64'), mediaType: OCI_LAYER_GZIP }] },
      { platform: { os: 'linux', architecture: 'arm64', variant: 'v8' }, layers: [{ data: await layer('arm64'), mediaType: OCI_LAYER_GZIP }] },
      { platform: { os: 'linux', architecture: 's390x' }, layers: [{ data: await layer('s390x'), mediaType: OCI_LAYER_GZIP }] },
    ],
  });
  await pushLayout(multi.layoutDir, 'multi', reg.host, 'ns/multi');
});

afterAll(async () => {
  await reg?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe('pull --oci-layout', () => {
  it('writes a layout that skopeo and umoci accept, with the registry digests', async () => {
    const out = join(tmp, 'out1');
    const r = await runCliAsync(['pull', `${reg.host}/ns/app:v1`, '--oci-layout', out, '--registries-conf', conf, '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary.manifestDigest).toBe(img.manifestDigest);
    expect(existsSync(`${out}.partial`)).toBe(false);
    const inspect = JSON.parse(execFileSync('skopeo', ['inspect', `oci:${out}:v1`]).toString());
    expect(inspect.Digest).toBe(img.manifestDigest);
    expect(inspect.Layers).toEqual(img.layers.map((l) => l.digest));
    const regDigest = JSON.parse(execFileSync('skopeo', ['inspect', '--tls-verify=false', `docker://${reg.host}/ns/app:v1`]).toString()).Digest;
    expect(regDigest).toBe(img.manifestDigest);
    const bundle = join(tmp, 'bundle1');
    execFileSync('umoci', ['unpack', '--rootless', '--image', `${out}:v1`, bundle], { stdio: 'pipe' });
    expect(readFileSync(join(bundle, 'rootfs', 'usr', 'bin', 'hello'), 'utf8')).toContain('echo hi');
    expect(readFileSync(join(bundle, 'rootfs', 'etc', 'os-release'), 'utf8')).toBe('ID=test\n');
  });

  it('pulls one platform of a multi-arch index, by --platform', async () => {
    const out = join(tmp, 'out-arm');
    const r = await runCliAsync(['pull', `${reg.host}/ns/multi:multi`, '--oci-layout', out, '--registries-conf', conf, '--platform', 'linux/arm64', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const arm = multi.images.find((i) => i.platform.architecture === 'arm64')!;
    expect(JSON.parse(r.stdout).manifestDigest).toBe(arm.manifestDigest);
    const blobs = readdirSync(join(out, 'blobs', 'sha256'));
    expect(blobs).toContain(arm.layers[0]!.digest.slice(7));
    expect(blobs).not.toContain(multi.images[0]!.layers[0]!.digest.slice(7));
  });

  it('pulls a Docker manifest list with schema2 manifests', async () => {
    const layer = await gzip(await simpleTar({ d: 'docker' }));
    const list = await buildOciIndex(join(tmp, 'dlist'), {
      tag: 'dl', docker: true,
      images: [
        { platform: { os: 'linux', architecture: 'amd64' }, layers: [{ data: layer, mediaType: DOCKER_LAYER_GZIP }] },
        { platform: { os: 'linux', architecture: 's390x' }, layers: [{ data: await gzip(await simpleTar({ d: 'z' })), mediaType: DOCKER_LAYER_GZIP }] },
      ],
    });
    await pushLayout(list.layoutDir, 'dl', reg.host, 'ns/dlist');
    const out = join(tmp, 'out-dl');
    const r = await runCliAsync(['pull', `${reg.host}/ns/dlist:dl`, '--oci-layout', out, '--registries-conf', conf, '--platform', 'linux/s390x', '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).manifestDigest).toBe(list.images[1]!.manifestDigest);
    const index = JSON.parse(readFileSync(join(out, 'index.json'), 'utf8'));
    expect(index.manifests[0].mediaType).toBe('application/vnd.docker.distribution.manifest.v2+json');
  });

  it('lists the available platforms when none matches', async () => {
    const out = join(tmp, 'out-none');
    const r = await runCliAsync(['pull', `${reg.host}/ns/multi:multi`, '--oci-layout', out, '--registries-conf', conf, '--platform', 'linux/ppc64le']);
    expect(r.code).toBe(3);
    expect(r.errorLine).toMatch(/no image for linux\/ppc64le; available: linux\/amd64, linux\/arm64\/v8, linux\/s390x/);
    expect(existsSync(out) || existsSync(`${out}.partial`)).toBe(false);
  });

  it('refuses an unknown repository with exit 3 and a 404 message', async () => {
    const out = join(tmp, 'out-404');
    const r = await runCliAsync(['pull', `${reg.host}/ns/nothing:v1`, '--oci-layout', out, '--registries-conf', conf]);
    expect(r.code).toBe(3);
    expect(r.errorLine).toMatch(/HTTP 404 (NAME|MANIFEST)_UNKNOWN \(no such repository or tag\)/);
    expect(r.errorLine.split('\n')).toHaveLength(1);
    expect(existsSync(out)).toBe(false);
  });

  it('stops at the registry.manifest failpoint, leaving no DIR', async () => {
    const out = join(tmp, 'out-fp');
    const r = await runCliAsync(['pull', `${reg.host}/ns/app:v1`, '--oci-layout', out, '--registries-conf', conf], { NODE_IMAGE_PIVOT_FAILPOINTS: 'registry.manifest:error=registry' });
    expect(r.code).toBe(3);
    expect(r.errorLine).toMatch(/failpoint registry\.manifest triggered/);
    expect(existsSync(out)).toBe(false);
  });

  it('refuses a malformed reference with exit 2, pointing at the character', async () => {
    const r = await runCliAsync(['pull', `${reg.host}/ns/App:v1`, '--oci-layout', join(tmp, 'x'), '--registries-conf', conf]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/"A" at position 19/);
  });

  it('pulls zstd layers and verifies them', async () => {
    const z = await buildOciLayout(join(tmp, 'zsrc'), { tag: 'z', layers: [{ data: await zstd(await simpleTar({ a: 'zstd!' })), mediaType: OCI_LAYER_ZSTD }] });
    await pushLayout(z.layoutDir, 'z', reg.host, 'ns/zstd');
    const out = join(tmp, 'out-z');
    const r = await runCliAsync(['pull', `${reg.host}/ns/zstd:z`, '--oci-layout', out, '--registries-conf', conf, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, 'blobs', 'sha256', z.layers[0]!.digest.slice(7)))).toHaveLength(z.layers[0]!.size);
  });

  it('refuses a manifest with an unsupported layer media type (exit 3)', async () => {
    const c = new PushClient(reg.host, 'ns/odd');
    const layer = Buffer.from('not a tar');
    const cfg = Buffer.from('{}');
    await c.pushBlob(layer);
    await c.pushBlob(cfg);
    const manifest = Buffer.from(JSON.stringify({
      schemaVersion: 2, mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha256(cfg), size: cfg.length },
      layers: [{ mediaType: 'application/vnd.example.squashfs', digest: sha256(layer), size: layer.length }],
    }));
    await c.pushManifest('v1', manifest, OCI_MANIFEST);
    await c.close();
    const out = join(tmp, 'out-odd');
    const r = await runCliAsync(['pull', `${reg.host}/ns/odd:v1`, '--oci-layout', out, '--registries-conf', conf]);
    expect(r.code).toBe(3);
    expect(r.errorLine).toMatch(/unsupported media type "application\/vnd.example.squashfs"/);
    expect(existsSync(out)).toBe(false);
  });

  it('fails a corrupted blob with exit 4 naming it, and keeps no DIR', async () => {
    const one = await buildOciLayout(join(tmp, 'corrupt-src'), { tag: 'c', layers: [{ data: await gzip(await simpleTar({ f: 'corrupt me please' })), mediaType: OCI_LAYER_GZIP }] });
    await pushLayout(one.layoutDir, 'c', reg.host, 'ns/corrupt');
    const path = registryBlobPath(reg.storageDir, one.layers[0]!.digest);
    const bytes = readFileSync(path);
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 5) ^ 0xff, bytes.length - 5);
    writeFileSync(path, bytes);
    const out = join(tmp, 'out-corrupt');
    const r = await runCliAsync(['pull', `${reg.host}/ns/corrupt:c`, '--oci-layout', out, '--registries-conf', conf]);
    expect(r.code).toBe(4);
    expect(r.errorLine).toContain(`blob ${one.layers[0]!.digest}`);
    expect(r.errorLine).toMatch(/has digest sha256:/);
    expect(existsSync(out)).toBe(false);
    // The bad bytes are not kept for a resume: a mismatch is permanent, so no DIR.partial either.
    expect(existsSync(`${out}.partial`)).toBe(false);
  });
});
