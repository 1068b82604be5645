// A small registry of our own on loopback, serving one OCI layout, for behaviours the real
// docker-registry cannot be made to show: blob redirects to another host (a "CDN"), a manifest
// that does not match its digest, connections cut mid-blob, ignored Range headers, 503 with
// Retry-After. It records every request so tests can assert what was sent where.
import { readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { join } from 'node:path';

export interface FakeBehaviour {
  /** Require Basic auth with these credentials on the registry host (never on the CDN). */
  basic?: { user: string; password: string };
  /** Require Bearer tokens from this realm; each token is honoured `maxUses` times, then 401. */
  bearer?: { realm: string; maxUses: number };
  /** Answer blob GETs with a 307 to a second server on another port. */
  redirectBlobs?: boolean;
  /** Serve these bytes for every manifest request instead of the real ones. */
  lyingManifest?: Buffer;
  /** Cut the connection after this many bytes, for the first `times` GETs of any blob. */
  cutAfter?: { bytes: number; times: number };
  /** Answer Range requests with the whole blob (200). */
  ignoreRange?: boolean;
  /** Send this many bytes of the first blob GET, then go silent (the socket stays open). */
  stallAfter?: number;
  /** Hang up without an answer on the first N manifest requests. */
  dropManifest?: number;
  /** The first N blob GETs get 503 with this Retry-After (seconds). */
  unavailable?: { times: number; retryAfter: string };
}

export interface SeenRequest {
  server: 'registry' | 'cdn';
  method: string;
  path: string;
  authorization: string | undefined;
  range: string | undefined;
}

export interface FakeRegistry {
  host: string;
  seen: SeenRequest[];
  stop(): Promise<void>;
}

function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ server: Server; port: number; sockets: Set<Socket> }> {
  const server = createServer(handler);
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ server, port: (server.address() as AddressInfo).port, sockets })));
}

export async function startFakeRegistry(layoutDir: string, tag: string, b: FakeBehaviour = {}): Promise<FakeRegistry> {
  const seen: SeenRequest[] = [];
  const index = JSON.parse(readFileSync(join(layoutDir, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string; mediaType: string; annotations?: Record<string, string> }> };
  const top = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag)!;
  const blobFile = (digest: string): string => join(layoutDir, 'blobs', 'sha256', digest.replace(/^sha256:/, ''));
  let cuts = 0;
  let stalled = false;
  let dropped = 0;
  const tokenUses = new Map<string, number>();
  let unavailable = 0;

  const serveBlob = (req: IncomingMessage, res: ServerResponse, digest: string): void => {
    let size: number;
    try { size = statSync(blobFile(digest)).size; } catch { res.writeHead(404).end('{"errors":[{"code":"BLOB_UNKNOWN"}]}'); return; }
    const data = readFileSync(blobFile(digest));
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
    let body = data;
    if (m && !b.ignoreRange) {
      const start = Number(m[1]);
      body = data.subarray(start);
      res.writeHead(206, { 'content-length': body.length, 'content-range': `bytes ${start}-${size - 1}/${size}`, 'content-type': 'application/octet-stream' });
    } else {
      res.writeHead(200, { 'content-length': size, 'content-type': 'application/octet-stream' });
    }
    if (b.stallAfter !== undefined && !stalled && body.length > b.stallAfter) {
      stalled = true;
      res.write(body.subarray(0, b.stallAfter));
      return;
    }
    if (b.cutAfter && cuts < b.cutAfter.times && body.length > b.cutAfter.bytes) {
      cuts++;
      res.write(body.subarray(0, b.cutAfter.bytes), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    res.end(body);
  };

  const cdn = await listen((req, res) => {
    seen.push({ server: 'cdn', method: req.method ?? '', path: req.url ?? '', authorization: req.headers.authorization, range: req.headers.range });
    serveBlob(req, res, (req.url ?? '').split('/').pop() ?? '');
  });

  const registry = await listen((req, res) => {
    const path = req.url ?? '';
    seen.push({ server: 'registry', method: req.method ?? '', path, authorization: req.headers.authorization, range: req.headers.range });
    if (b.basic) {
      const want = `Basic ${Buffer.from(`${b.basic.user}:${b.basic.password}`).toString('base64')}`;
      if (req.headers.authorization !== want) {
        res.writeHead(401, { 'www-authenticate': 'Basic realm="fake"', 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED"}]}');
        return;
      }
    }
    if (b.bearer) {
      const auth = req.headers.authorization ?? '';
      const used = tokenUses.get(auth) ?? 0;
      if (!auth.startsWith('Bearer ') || used >= b.bearer.maxUses) {
        res.writeHead(401, { 'www-authenticate': `Bearer realm="${b.bearer.realm}",service="fake"`, 'content-type': 'application/json' }).end('{"errors":[{"code":"UNAUTHORIZED"}]}');
        return;
      }
      tokenUses.set(auth, used + 1);
    }
    const manifest = /^\/v2\/(.+)\/manifests\/([^/]+)$/.exec(path);
    if (manifest && dropped < (b.dropManifest ?? 0)) {
      dropped++;
      req.socket.destroy();
      return;
    }
    if (manifest) {
      const ref = manifest[2]!;
      const digest = ref === tag ? top.digest : ref;
      let bytes: Buffer;
      try { bytes = b.lyingManifest ?? readFileSync(blobFile(digest)); } catch { res.writeHead(404).end('{"errors":[{"code":"MANIFEST_UNKNOWN"}]}'); return; }
      const doc = JSON.parse(readFileSync(blobFile(digest)).toString()) as { mediaType?: string };
      res.writeHead(200, { 'content-type': doc.mediaType ?? top.mediaType, 'content-length': bytes.length }).end(req.method === 'HEAD' ? undefined : bytes);
      return;
    }
    const blob = /^\/v2\/(.+)\/blobs\/(sha256:[a-f0-9]{64})$/.exec(path);
    if (blob) {
      if (b.unavailable && unavailable < b.unavailable.times) {
        unavailable++;
        res.writeHead(503, { 'retry-after': b.unavailable.retryAfter }).end();
        return;
      }
      if (b.redirectBlobs) {
        res.writeHead(307, { location: `http://127.0.0.1:${cdn.port}/cdn/${blob[2]}` }).end();
        return;
      }
      serveBlob(req, res, blob[2]!);
      return;
    }
    res.writeHead(path === '/v2/' ? 200 : 404).end('{}');
  });

  const close = (s: { server: Server; sockets: Set<Socket> }): Promise<void> =>
    new Promise((r) => { for (const k of s.sockets) k.destroy(); s.server.close(() => r()); });
  return {
    host: `127.0.0.1:${registry.port}`,
    seen,
    stop: async () => { await close(registry); await close(cdn); },
  };
}
