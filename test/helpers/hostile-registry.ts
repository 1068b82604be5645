// A hostile registry of our own on 127.0.0.1 (node:http or node:https): it serves images held in
// memory, and a test's handler may answer any request first, however a malicious registry, CDN
// or token realm would (forged layers, endless bodies, trickles, lying headers, foreign 401s).
// Every request is recorded with its Authorization so tests can assert what was sent where.
//
//   const img = imageOf([{ data: layerBytes, mediaType: OCI_LAYER_GZIP }]);
//   const reg = await startHostile({ images: { 'ns/app': img }, handler: (req, res) => false });
//   reg.host  127.0.0.1:PORT; reg.seen: every request
import { createServer as createHttp, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttps } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { OCI_CONFIG, OCI_MANIFEST, sha256 } from './oci-image.ts';

export interface Blob { digest: string; size: number; mediaType: string }

export interface HostileImage {
  /** Tag or digest -> manifest bytes and media type (an index and its children live here too). */
  manifests: Map<string, { bytes: Buffer; mediaType: string }>;
  blobs: Map<string, Buffer>;
  /** The image manifest's digest, its config and its layers as listed. */
  digest: string;
  config: Blob;
  layers: Blob[];
}

/** An image in memory, tagged `tag`. `order` lists layer indexes as the manifest should (repeats allowed). */
export function imageOf(layers: Array<{ data: Buffer; mediaType: string }>, opts: { tag?: string; order?: number[]; config?: object } = {}): HostileImage {
  const config = Buffer.from(JSON.stringify(opts.config ?? { architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
  const blobs = new Map<string, Buffer>([[sha256(config), config]]);
  const descs = layers.map((l) => {
    blobs.set(sha256(l.data), l.data);
    return { mediaType: l.mediaType, digest: sha256(l.data), size: l.data.length };
  });
  const listed = (opts.order ?? descs.map((_, i) => i)).map((i) => descs[i]!);
  const configDesc = { mediaType: OCI_CONFIG, digest: sha256(config), size: config.length };
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: configDesc, layers: listed }));
  const digest = sha256(manifest);
  const manifests = new Map([[opts.tag ?? 'v1', { bytes: manifest, mediaType: OCI_MANIFEST }], [digest, { bytes: manifest, mediaType: OCI_MANIFEST }]]);
  return { manifests, blobs, digest, config: configDesc, layers: listed };
}

export interface HostileSeen { method: string; path: string; authorization: string | undefined; range: string | undefined }

/** Answers the request (returns true) or leaves it to the default image serving (false). */
export type HostileHandler = (req: IncomingMessage, res: ServerResponse, seen: HostileSeen[]) => boolean | Promise<boolean>;

export interface HostileServer {
  host: string;
  url: string;
  seen: HostileSeen[];
  stop(): Promise<void>;
}

export interface HostileOptions {
  images?: Record<string, HostileImage>;
  handler?: HostileHandler;
  /** Serve HTTPS with this certificate (see issueServerCert in registry.ts). */
  tls?: { cert: string; key: string };
}

const MANIFEST = /^\/v2\/(.+)\/manifests\/([^/?]+)$/;
const BLOB = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/;

function serveImage(images: Record<string, HostileImage>, req: IncomingMessage, res: ServerResponse): void {
  const path = (req.url ?? '').split('?')[0]!;
  if (path === '/v2/') { res.writeHead(200, { 'content-type': 'application/json' }).end('{}'); return; }
  const m = MANIFEST.exec(path);
  const man = m && images[m[1]!]?.manifests.get(m[2]!);
  if (man) {
    res.writeHead(200, { 'content-type': man.mediaType, 'content-length': man.bytes.length, 'docker-content-digest': sha256(man.bytes) });
    res.end(req.method === 'HEAD' ? undefined : man.bytes);
    return;
  }
  const b = BLOB.exec(path);
  const blob = b && images[b[1]!]?.blobs.get(b[2]!);
  if (blob) {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': blob.length });
    res.end(req.method === 'HEAD' ? undefined : blob);
    return;
  }
  res.writeHead(404, { 'content-type': 'application/json' }).end('{"errors":[{"code":"NOT_FOUND"}]}');
}

export async function startHostile(opts: HostileOptions = {}): Promise<HostileServer> {
  const seen: HostileSeen[] = [];
  const sockets = new Set<Socket>();
  const images = opts.images ?? {};
  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    seen.push({ method: req.method ?? 'GET', path: req.url ?? '/', authorization: req.headers.authorization, range: req.headers.range });
    // A client that gives up mid-answer is expected here; the server must not die of EPIPE.
    res.on('error', () => undefined);
    void (async () => {
      if (opts.handler && await opts.handler(req, res, seen)) return;
      serveImage(images, req, res);
    })().catch(() => res.destroy());
  };
  const server = opts.tls ? createHttps({ cert: opts.tls.cert, key: opts.tls.key }, onRequest) : createHttp(onRequest);
  server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  server.on('secureConnection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    host,
    url: `${opts.tls ? 'https' : 'http'}://${host}`,
    seen,
    stop: () => new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    }),
  };
}

/** Writes `total` bytes of `fill` (or forever when total is Infinity), honouring backpressure. */
export async function writeEndless(res: ServerResponse, total: number, fill = 'a'): Promise<void> {
  const chunk = Buffer.alloc(64 * 1024, fill);
  let sent = 0;
  while (sent < total && !res.destroyed) {
    const piece = total - sent < chunk.length ? chunk.subarray(0, total - sent) : chunk;
    sent += piece.length;
    if (!res.write(piece)) {
      await new Promise<void>((r) => {
        const done = (): void => { res.off('drain', done); res.off('close', done); r(); };
        res.on('drain', done);
        res.on('close', done);
      });
    }
  }
}

/** Sends `body` one byte per `everyMs`, until done or the client hangs up. */
export async function trickle(res: ServerResponse, body: Buffer, everyMs: number): Promise<void> {
  for (let i = 0; i < body.length && !res.destroyed; i++) {
    res.write(body.subarray(i, i + 1));
    await new Promise((r) => setTimeout(r, everyMs));
  }
  res.end();
}
