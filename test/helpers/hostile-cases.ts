// The hostile-registry cases of issue 17, each a running server (or two) and the command to point
// at it. test/faults/hostile-registry.test.ts asserts on them; scripts/bench/hostile.ts runs the
// same cases under GNU time for the peak-RSS / wall-time table in docs/reliability.md.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { imageOf, startHostile, trickle, writeEndless, type HostileHandler, type HostileImage, type HostileServer } from './hostile-registry.ts';
import { OCI_INDEX, OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_MANIFEST, sha256 } from './oci-image.ts';
import { pad, paxRecord, tarHeader, TarBuilder } from './tar-builder.ts';

export const GOOD_PULLSPEC = `quay.io/ocp/coreos@sha256:${'a'.repeat(64)}`;
export const FORGED_PULLSPEC = `evil.example/coreos@sha256:${'e'.repeat(64)}`;
export const USER = { user: 'alice', password: 's3cret-pw' };

export const imageStream = (pullspec: string): string => JSON.stringify({
  kind: 'ImageStream', apiVersion: 'image.openshift.io/v1',
  spec: { tags: [{ name: 'rhel-coreos', from: { kind: 'DockerImage', name: pullspec } }] },
});
export const referencesLayer = (pullspec: string): Buffer =>
  gzipSync(new TarBuilder().dir('release-manifests').file('release-manifests/image-references', imageStream(pullspec)).end());
const smallLayer = (name = 'etc/motd'): Buffer => gzipSync(new TarBuilder().file(name, `${name}\n`).end());

export interface HostileCase {
  /** 'cli': the agent's CLI; 'open': scripts/bench/hostile-open.ts (openImage + OCI layout with `timeouts`). */
  runner: 'cli' | 'open';
  args: string[];
  timeouts?: Record<string, number>;
  env?: Record<string, string>;
  servers: HostileServer[];
  /** Case-specific observations after the run (requests seen, where credentials went). */
  observe(): Record<string, unknown>;
  stop(): Promise<void>;
}

function confFor(dir: string, hosts: string[]): string {
  const file = join(dir, 'registries.conf');
  writeFileSync(file, hosts.map((h) => `[[registry]]\nlocation = "${h}"\ninsecure = true\n`).join('\n'));
  return file;
}

function authFileFor(dir: string, host: string): string {
  const file = join(dir, 'auth.json');
  writeFileSync(file, JSON.stringify({ auths: { [host]: { auth: Buffer.from(`${USER.user}:${USER.password}`).toString('base64') } } }));
  return file;
}

const stopAll = (servers: HostileServer[]) => async (): Promise<void> => { await Promise.all(servers.map((s) => s.stop())); };
const count = (s: HostileServer, re: RegExp): number => s.seen.filter((r) => re.test(`${r.method} ${r.path}`)).length;

async function single(tmp: string, images: Record<string, HostileImage>, handler: HostileHandler | undefined, args: (host: string, conf: string, dir: string) => string[]): Promise<HostileCase & { server: HostileServer }> {
  const dir = mkdtempSync(join(tmp, 'case-'));
  const server = await startHostile({ images, ...(handler ? { handler } : {}) });
  const conf = confFor(dir, [server.host]);
  return { runner: 'cli', args: args(server.host, conf, dir), servers: [server], server, observe: () => ({ requests: server.seen.length }), stop: stopAll([server]) };
}

const layoutArgs = (ref: string, conf: string, dir: string, more: string[] = []): string[] =>
  ['pull', ref, '--oci-layout', join(dir, 'out'), '--registries-conf', conf, ...more];

/** A Bearer-protected registry whose token endpoint (same host) answers with `token`. */
async function tokenCase(tmp: string, token: (res: ServerResponse) => Promise<void>): Promise<HostileCase> {
  const img = imageOf([{ data: smallLayer(), mediaType: OCI_LAYER_GZIP }]);
  let host = '';
  const c = await single(tmp, { 'ns/app': img }, async (req, res) => {
    if (req.url?.startsWith('/token')) { await token(res); return true; }
    if (!req.headers.authorization?.startsWith('Bearer ')) {
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${host}/token",service="hostile"` }).end();
      return true;
    }
    return false;
  }, (h, conf, dir) => layoutArgs(`${h}/ns/app:v1`, conf, dir));
  host = c.server.host;
  return { ...c, observe: () => ({ tokenRequests: count(c.server, /^GET \/token/), manifestRequests: count(c.server, /manifests/) }) };
}

export const HOSTILE_CASES: Record<string, (tmp: string) => Promise<HostileCase>> = {
  /** Item 1: a release image pinned by digest whose top layer is swapped for a forged one. */
  async 'forged release layer (resolve by digest)'(tmp) {
    // The genuine layer has more after image-references; the forged one is padded to the same
    // size, so no size check can tell them apart before the digest at the end.
    const genuine = gzipSync(new TarBuilder().dir('release-manifests').file('release-manifests/image-references', imageStream(GOOD_PULLSPEC))
      .file('release-manifests/release-metadata', randomBytes(2_000_000)).end());
    const img = imageOf([{ data: smallLayer(), mediaType: OCI_LAYER_GZIP }, { data: genuine, mediaType: OCI_LAYER_GZIP }], { tag: 'rel' });
    const top = img.layers[1]!.digest;
    const forged = Buffer.alloc(genuine.length);
    referencesLayer(FORGED_PULLSPEC).copy(forged);
    const c = await single(tmp, { 'ocp/release': img }, (req, res) => {
      if (!req.url?.endsWith(`/blobs/${top}`)) return false;
      res.writeHead(200, { 'content-length': forged.length }).end(forged);
      return true;
    }, (h, conf) => ['resolve', `${h}/ocp/release@${img.digest}`, '--registries-conf', conf, '--json']);
    return { ...c, observe: () => ({ layer: top }) };
  },

  /** Item 2: blobs redirect to a CDN that answers 401 with a Bearer realm of its own. */
  async 'CDN 401 with its own realm after a redirect'(tmp) {
    const dir = mkdtempSync(join(tmp, 'case-'));
    const img = imageOf([{ data: smallLayer(), mediaType: OCI_LAYER_GZIP }]);
    let cdnHost = '';
    const cdn = await startHostile({
      handler: (req, res) => {
        if (req.url?.startsWith('/realm')) { res.writeHead(200, { 'content-type': 'application/json' }).end('{"token":"cdn-token"}'); return true; }
        res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${cdnHost}/realm",service="cdn"` }).end();
        return true;
      },
    });
    cdnHost = cdn.host;
    const basic = `Basic ${Buffer.from(`${USER.user}:${USER.password}`).toString('base64')}`;
    const reg = await startHostile({
      images: { 'ns/app': img },
      handler: (req, res) => {
        if (req.headers.authorization !== basic) { res.writeHead(401, { 'www-authenticate': 'Basic realm="registry"' }).end(); return true; }
        const blob = /\/blobs\/(sha256:[a-f0-9]{64})$/.exec(req.url ?? '');
        if (blob && blob[1] !== img.config.digest) { res.writeHead(307, { location: `http://${cdn.host}/cdn/${blob[1]}` }).end(); return true; }
        return false;
      },
    });
    const conf = confFor(dir, [reg.host, cdn.host]);
    const authfile = authFileFor(dir, reg.host);
    return {
      runner: 'cli',
      args: layoutArgs(`${reg.host}/ns/app:v1`, conf, dir, ['--authfile', authfile]),
      servers: [reg, cdn],
      observe: () => ({
        cdnHost: cdn.host,
        credentialsAtCdn: cdn.seen.filter((s) => s.authorization === basic).length,
        realmRequests: count(cdn, /^GET \/realm/),
      }),
      stop: stopAll([reg, cdn]),
    };
  },

  /** Item 3: a 100 MB token. */
  async 'token response of 100 MB'(tmp) {
    return tokenCase(tmp, async (res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"token":"');
      await writeEndless(res, 100_000_000);
      res.end('"}');
    });
  },

  /** Item 3: a token response that never ends. */
  async 'endless token response'(tmp) {
    return tokenCase(tmp, async (res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"token":"');
      await writeEndless(res, Infinity);
    });
  },

  /** Item 4: the manifest trickles at one byte a second; timeouts.pullSeconds is 5. */
  async 'manifest at 1 byte/s, pullSeconds 5'(tmp) {
    const img = imageOf([{ data: smallLayer(), mediaType: OCI_LAYER_GZIP }]);
    const bytes = img.manifests.get('v1')!.bytes;
    const c = await single(tmp, { 'ns/app': img }, (req, res) => {
      if (!req.url?.includes('/manifests/')) return false;
      res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': bytes.length });
      void trickle(res, bytes, 1000);
      return true;
    }, (h, conf, dir) => [`${h}/ns/app:v1`, conf, join(dir, 'out')]);
    return { ...c, runner: 'open', timeouts: { pullSeconds: 5, readSeconds: 60, connectSeconds: 30 }, observe: () => ({ manifestRequests: count(c.server, /manifests/) }) };
  },

  /** Item 5: an 86 MB layer of global PAX headers, each adding a new key. */
  async 'global PAX headers, 86 MB layer'(tmp) {
    const parts: Buffer[] = [];
    const value = 'v'.repeat(400);
    let size = 0;
    for (let i = 0; size < 86_000_000; i++) {
      const body = paxRecord(`key.${i}`, value);
      const entry = Buffer.concat([tarHeader({ name: 'pax_global_header', type: 'g', size: body.length }), body, pad(body.length)]);
      parts.push(entry);
      size += entry.length;
    }
    parts.push(new TarBuilder().file('etc/motd', 'x').end());
    const img = imageOf([{ data: Buffer.concat(parts), mediaType: OCI_LAYER_TAR }]);
    return single(tmp, { 'ns/app': img }, undefined, (h, conf, dir) => ['pull', `${h}/ns/app:v1`, '--dest', join(dir, 'out'), '--registries-conf', conf]);
  },

  /** Item 6: an index with 10,000 platforms, none of them the one asked for. */
  async 'index of 10,000 platforms'(tmp) {
    const img = imageOf([{ data: smallLayer(), mediaType: OCI_LAYER_GZIP }]);
    const manifests = Array.from({ length: 10_000 }, (_, i) => ({
      mediaType: OCI_MANIFEST, digest: img.digest, size: img.manifests.get('v1')!.bytes.length, platform: { os: 'linux', architecture: `arch${i}` },
    }));
    const index = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }));
    img.manifests.set('multi', { bytes: index, mediaType: OCI_INDEX });
    return single(tmp, { 'ns/app': img }, undefined, (h, conf, dir) => layoutArgs(`${h}/ns/app:multi`, conf, dir, ['--platform', 'linux/amd64']));
  },

  /** Item 7: one layer listed three times. */
  async 'one layer listed 3 times (pull --oci-layout)'(tmp) {
    const layer = gzipSync(new TarBuilder().file('usr/big', Buffer.alloc(2_000_000, 7)).end(), { level: 1 });
    const img = imageOf([{ data: layer, mediaType: OCI_LAYER_GZIP }], { order: [0, 0, 0] });
    const digest = img.layers[0]!.digest;
    const c = await single(tmp, { 'ns/app': img }, undefined, (h, conf, dir) => layoutArgs(`${h}/ns/app:v1`, conf, dir));
    return { ...c, observe: () => ({ layerGets: count(c.server, new RegExp(`^GET .*/blobs/${digest}`)) }) };
  },

  /** Also: 25,000 layers, which fit under the 4 MiB manifest cap. */
  async 'manifest with 25,000 layers'(tmp) {
    const layers = Array.from({ length: 25_000 }, (_, i) => ({ data: gzipSync(new TarBuilder().file(`f${i}`, '').end()), mediaType: OCI_LAYER_GZIP }));
    const img = imageOf(layers);
    const c = await single(tmp, { 'ns/app': img }, undefined, (h, conf, dir) => layoutArgs(`${h}/ns/app:v1`, conf, dir));
    return { ...c, observe: () => ({ manifestBytes: img.manifests.get('v1')!.bytes.length, blobRequests: count(c.server, /\/blobs\//) }) };
  },

  /** Also: a 1000x gzip bomb (2 GiB of zeros) above the layer that holds image-references. */
  async 'decompression bomb in resolve (1000x, 2 GiB)'(tmp) {
    const zeros = gzipSync(Buffer.alloc(1024 * 1024));
    const bombSize = 2 * 1024 ** 3;
    const head = gzipSync(tarHeader({ name: 'usr/zeros', size: bombSize }));
    const tail = gzipSync(Buffer.concat([Buffer.alloc(1024)]));
    const bomb = Buffer.concat([head, ...Array.from({ length: bombSize / (1024 * 1024) }, () => zeros), tail]);
    const img = imageOf([{ data: referencesLayer(GOOD_PULLSPEC), mediaType: OCI_LAYER_GZIP }, { data: bomb, mediaType: OCI_LAYER_GZIP }], { tag: 'rel' });
    const c = await single(tmp, { 'ocp/release': img }, undefined, (h, conf) => ['resolve', `${h}/ocp/release:rel`, '--registries-conf', conf, '--json']);
    return { ...c, observe: () => ({ bombBytes: bomb.length, ratio: Math.round(bombSize / bomb.length) }) };
  },

  /** Also: permanent answers. A token with a CRLF in it. */
  async 'token with a CRLF'(tmp) {
    return tokenCase(tmp, async (res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: 'abc\r\nX-Injected: 1' }));
    });
  },

  async 'redirect to file:///etc/passwd'(tmp) {
    const img = imageOf([{ data: smallLayer(), mediaType: OCI_LAYER_GZIP }]);
    const c = await single(tmp, { 'ns/app': img }, (req, res) => {
      if (!req.url?.includes('/blobs/') || req.url.endsWith(img.config.digest)) return false;
      res.writeHead(302, { location: 'file:///etc/passwd' }).end();
      return true;
    }, (h, conf, dir) => layoutArgs(`${h}/ns/app:v1`, conf, dir));
    return { ...c, observe: () => ({ blobRequests: count(c.server, /^GET .*\/blobs\//) - 1 }) };
  },

  async 'response header overflow (64 KiB header)'(tmp) {
    const img = imageOf([{ data: smallLayer(), mediaType: OCI_LAYER_GZIP }]);
    const c = await single(tmp, { 'ns/app': img }, (req, res) => {
      if (!req.url?.includes('/manifests/')) return false;
      res.writeHead(200, { 'x-filler': 'f'.repeat(64 * 1024), 'content-type': OCI_MANIFEST }).end('{}');
      return true;
    }, (h, conf, dir) => layoutArgs(`${h}/ns/app:v1`, conf, dir));
    return { ...c, observe: () => ({ manifestRequests: count(c.server, /manifests/) }) };
  },

  async 'malformed HTTP response'(tmp) {
    const img = imageOf([{ data: smallLayer(), mediaType: OCI_LAYER_GZIP }]);
    const c = await single(tmp, { 'ns/app': img }, (req) => {
      if (!req.url?.includes('/manifests/')) return false;
      req.socket.end('HTTP/1.1 2x0 NOPE\r\nbroken header line\r\n\r\n');
      return true;
    }, (h, conf, dir) => layoutArgs(`${h}/ns/app:v1`, conf, dir));
    return { ...c, observe: () => ({ manifestRequests: count(c.server, /manifests/) }) };
  },
};

export { sha256 };
