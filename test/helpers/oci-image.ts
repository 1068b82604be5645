// Builds OCI image layouts for tests and pushes them to a loopback registry natively (blob
// uploads + manifest PUTs), which is faster than skopeo and can push deliberately odd manifests.
//
//   const img = await buildOciLayout(dir, { layers: [{ data: await gzip(simpleTar({ 'a': 'x' })), mediaType: OCI_LAYER_GZIP }] });
//   await pushLayout(img.layoutDir, img.tag, reg.host, 'ns/app');
import { createHash } from 'node:crypto';
import { createReadStream, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
import { pack } from 'tar-stream';
import { Agent, request, type Dispatcher } from 'undici';

export const OCI_LAYOUT_VERSION = '1.0.0';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER_GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const OCI_LAYER_ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd';
export const OCI_LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';
export const DOCKER_LAYER_GZIP = 'application/vnd.docker.image.rootfs.diff.tar.gzip';

export interface Platform { os: string; architecture: string; variant?: string }
export interface Descriptor { mediaType: string; digest: string; size: number; platform?: Platform; annotations?: Record<string, string> }
export interface LayerInput {
  /** Already-compressed bytes as they go into the registry. */
  data: Buffer;
  mediaType: string;
  /** sha256 of the uncompressed tar; computed when omitted. */
  diffId?: string;
}
export interface BuildOptions {
  layers: LayerInput[];
  config?: object;
  tag?: string;
  platform?: Platform;
  /** Docker schema2 media types instead of OCI ones. */
  docker?: boolean;
}
export interface BuiltImage {
  layoutDir: string;
  tag: string;
  manifestDigest: string;
  configDigest: string;
  layers: Array<{ digest: string; size: number; mediaType: string }>;
  /** Bytes of the manifest as stored (what the registry will serve). */
  manifest: Buffer;
}
export interface BuiltIndex {
  layoutDir: string;
  tag: string;
  indexDigest: string;
  images: Array<BuiltImage & { platform: Platform }>;
}

export const sha256 = (b: Buffer | string): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;
export const gzip = (b: Buffer, level = 6): Promise<Buffer> => promisify(zlib.gzip)(b, { level });
export const zstd = (b: Buffer): Promise<Buffer> => promisify(zlib.zstdCompress)(b);

/** A tar of regular files (paths ending in / become directories). Fine for small fixtures. */
export async function simpleTar(files: Record<string, string | Buffer>): Promise<Buffer> {
  const p = pack();
  const chunks: Buffer[] = [];
  p.on('data', (c: unknown) => { chunks.push(c as Buffer); });
  const done = new Promise<void>((resolve, reject) => { p.on('end', resolve); p.on('error', reject); });
  for (const [name, content] of Object.entries(files)) {
    if (name.endsWith('/')) p.entry({ name, type: 'directory', mode: 0o755 });
    else p.entry({ name, mode: 0o644 }, typeof content === 'string' ? Buffer.from(content) : content);
  }
  p.finalize();
  await done;
  return Buffer.concat(chunks);
}

function uncompressed(layer: LayerInput): Buffer {
  if (layer.mediaType.includes('gzip')) return zlib.gunzipSync(layer.data);
  if (layer.mediaType.includes('zstd')) return zlib.zstdDecompressSync(layer.data);
  return layer.data;
}

function writeBlob(layoutDir: string, data: Buffer | string): { digest: string; size: number } {
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const digest = sha256(buf);
  const dir = join(layoutDir, 'blobs', 'sha256');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, digest.slice(7)), buf);
  return { digest, size: buf.length };
}

function hostPlatform(): Platform {
  const arch = ({ x64: 'amd64', arm64: 'arm64', s390x: 's390x', ppc64: 'ppc64le' } as Record<string, string>)[process.arch] ?? process.arch;
  return { os: 'linux', architecture: arch };
}

/** Writes config, layers and manifest blobs; does not touch index.json. */
function writeImage(layoutDir: string, opts: BuildOptions): Omit<BuiltImage, 'layoutDir' | 'tag'> & { platform: Platform } {
  const platform = opts.platform ?? hostPlatform();
  const layers = opts.layers.map((l) => ({ ...writeBlob(layoutDir, l.data), mediaType: l.mediaType }));
  const diffIds = opts.layers.map((l) => l.diffId ?? sha256(uncompressed(l)));
  const config = opts.config ?? {
    ...platform,
    created: '2024-01-01T00:00:00Z',
    config: { Env: ['PATH=/usr/bin'] },
    rootfs: { type: 'layers', diff_ids: diffIds },
  };
  const cfg = writeBlob(layoutDir, JSON.stringify(config));
  const manifestObj = {
    schemaVersion: 2,
    mediaType: opts.docker ? DOCKER_MANIFEST : OCI_MANIFEST,
    config: { mediaType: opts.docker ? DOCKER_CONFIG : OCI_CONFIG, ...cfg },
    layers,
  };
  const manifest = Buffer.from(JSON.stringify(manifestObj));
  const m = writeBlob(layoutDir, manifest);
  return { manifestDigest: m.digest, configDigest: cfg.digest, layers, manifest, platform };
}

function writeLayoutFiles(layoutDir: string, top: Descriptor, tag: string): void {
  writeFileSync(join(layoutDir, 'oci-layout'), JSON.stringify({ imageLayoutVersion: OCI_LAYOUT_VERSION }));
  const index = {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [{ ...top, annotations: { 'org.opencontainers.image.ref.name': tag } }],
  };
  writeFileSync(join(layoutDir, 'index.json'), JSON.stringify(index));
}

export async function buildOciLayout(layoutDir: string, opts: BuildOptions): Promise<BuiltImage> {
  mkdirSync(layoutDir, { recursive: true });
  const tag = opts.tag ?? 'latest';
  const img = writeImage(layoutDir, opts);
  writeLayoutFiles(layoutDir, { mediaType: opts.docker ? DOCKER_MANIFEST : OCI_MANIFEST, digest: img.manifestDigest, size: img.manifest.length }, tag);
  return { layoutDir, tag, manifestDigest: img.manifestDigest, configDigest: img.configDigest, layers: img.layers, manifest: img.manifest };
}

/** One layout whose tag points at an image index with one manifest per platform. */
export async function buildOciIndex(layoutDir: string, opts: { tag?: string; images: Array<BuildOptions & { platform: Platform }>; docker?: boolean }): Promise<BuiltIndex> {
  mkdirSync(layoutDir, { recursive: true });
  const tag = opts.tag ?? 'latest';
  const images = opts.images.map((o) => ({ ...writeImage(layoutDir, { ...o, docker: opts.docker ?? o.docker }), layoutDir, tag }));
  const index = {
    schemaVersion: 2,
    mediaType: opts.docker ? DOCKER_LIST : OCI_INDEX,
    manifests: images.map((i) => ({ mediaType: opts.docker ? DOCKER_MANIFEST : OCI_MANIFEST, digest: i.manifestDigest, size: i.manifest.length, platform: i.platform })),
  };
  const ix = writeBlob(layoutDir, JSON.stringify(index));
  writeLayoutFiles(layoutDir, { mediaType: index.mediaType, digest: ix.digest, size: ix.size }, tag);
  return { layoutDir, tag, indexDigest: ix.digest, images };
}

// ---- native push -------------------------------------------------------------------------

export interface PushOptions {
  user?: string;
  password?: string;
  /** CA for a TLS registry; https is used when given. */
  caFile?: string;
  /** Client certificate and key files for a registry that wants mutual TLS. */
  clientCert?: { cert: string; key: string };
}

/** Minimal client for pushing: handles Basic and Bearer challenges for pull,push scope. */
export class PushClient {
  readonly base: string;
  readonly repo: string;
  private readonly dispatcher: Dispatcher;
  private readonly opts: PushOptions;
  private authHeader: string | undefined;

  constructor(host: string, repo: string, opts: PushOptions = {}) {
    this.base = `${opts.caFile ? 'https' : 'http'}://${host}`;
    this.repo = repo;
    this.opts = opts;
    this.dispatcher = new Agent({ connect: {
      ...(opts.caFile ? { ca: readFileSync(opts.caFile, 'utf8') } : {}),
      ...(opts.clientCert ? { cert: readFileSync(opts.clientCert.cert, 'utf8'), key: readFileSync(opts.clientCert.key, 'utf8') } : {}),
    } });
  }

  async close(): Promise<void> { await this.dispatcher.close(); }

  private async authorize(challenge: string): Promise<void> {
    const basic = this.opts.user !== undefined ? `Basic ${Buffer.from(`${this.opts.user}:${this.opts.password ?? ''}`).toString('base64')}` : undefined;
    if (/^basic/i.test(challenge)) { this.authHeader = basic; return; }
    const params = Object.fromEntries([...challenge.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1]!, m[2]!]));
    const url = new URL(params.realm!);
    if (params.service) url.searchParams.set('service', params.service);
    url.searchParams.set('scope', `repository:${this.repo}:pull,push`);
    const res = await request(url, { dispatcher: this.dispatcher, headers: basic ? { authorization: basic } : {} });
    const body = await res.body.json() as { token?: string; access_token?: string };
    if (res.statusCode !== 200) throw new Error(`token server said ${res.statusCode}`);
    this.authHeader = `Bearer ${body.token ?? body.access_token}`;
  }

  async call(method: Dispatcher.HttpMethod, path: string, headers: Record<string, string> = {}, body?: () => Dispatcher.DispatchOptions['body']): Promise<Dispatcher.ResponseData> {
    for (let attempt = 0; ; attempt++) {
      const url = path.startsWith('http') ? path : `${this.base}${path}`;
      const res = await request(url, {
        method, dispatcher: this.dispatcher, body: body?.() ?? null,
        headers: { ...headers, ...(this.authHeader ? { authorization: this.authHeader } : {}) },
      });
      if (res.statusCode === 401 && attempt === 0) {
        await res.body.dump();
        await this.authorize(String(res.headers['www-authenticate'] ?? ''));
        continue;
      }
      return res;
    }
  }

  async pushBlob(file: string | Buffer): Promise<string> {
    const size = Buffer.isBuffer(file) ? file.length : statSync(file).size;
    const digest = Buffer.isBuffer(file) ? sha256(file) : await hashFile(file);
    const head = await this.call('HEAD', `/v2/${this.repo}/blobs/${digest}`);
    await head.body.dump();
    if (head.statusCode === 200) return digest;
    const start = await this.call('POST', `/v2/${this.repo}/blobs/uploads/`);
    await start.body.dump();
    if (start.statusCode !== 202) throw new Error(`upload start for ${digest}: HTTP ${start.statusCode}`);
    const loc = new URL(String(start.headers.location), this.base);
    loc.searchParams.set('digest', digest);
    const put = await this.call('PUT', loc.toString(), { 'content-type': 'application/octet-stream', 'content-length': String(size) },
      () => (Buffer.isBuffer(file) ? file : createReadStream(file)));
    const text = await put.body.text();
    if (put.statusCode !== 201) throw new Error(`upload of ${digest}: HTTP ${put.statusCode} ${text}`);
    return digest;
  }

  async pushManifest(ref: string, bytes: Buffer, mediaType: string): Promise<string> {
    const res = await this.call('PUT', `/v2/${this.repo}/manifests/${ref}`, { 'content-type': mediaType }, () => bytes);
    const text = await res.body.text();
    if (res.statusCode !== 201) throw new Error(`manifest PUT ${ref}: HTTP ${res.statusCode} ${text}`);
    return sha256(bytes);
  }
}

async function hashFile(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return `sha256:${h.digest('hex')}`;
}

const blobPath = (layoutDir: string, digest: string): string => join(layoutDir, 'blobs', 'sha256', digest.slice(7));

async function pushDescriptor(client: PushClient, layoutDir: string, desc: Descriptor, ref: string): Promise<void> {
  const bytes = readFileSync(blobPath(layoutDir, desc.digest));
  const doc = JSON.parse(bytes.toString()) as { manifests?: Descriptor[]; config?: Descriptor; layers?: Descriptor[] };
  if (doc.manifests) {
    for (const m of doc.manifests) await pushDescriptor(client, layoutDir, m, m.digest);
  } else {
    for (const b of [doc.config!, ...(doc.layers ?? [])]) await client.pushBlob(blobPath(layoutDir, b.digest));
  }
  await client.pushManifest(ref, bytes, desc.mediaType);
}

/** Pushes TAG of an OCI layout (manifest or index, with everything it references) to HOST/REPO:TAG. */
export async function pushLayout(layoutDir: string, tag: string, registryHost: string, repo: string, opts: PushOptions = {}): Promise<void> {
  const index = JSON.parse(readFileSync(join(layoutDir, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
  const top = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!top) throw new Error(`tag ${tag} not in ${layoutDir}/index.json`);
  const client = new PushClient(registryHost, repo, opts);
  try {
    await pushDescriptor(client, layoutDir, top, tag);
  } finally {
    await client.close();
  }
}

/** Path of a blob's data inside a docker-registry filesystem storage (to corrupt it in tests). */
export function registryBlobPath(storageRoot: string, digest: string): string {
  const hex = digest.slice(7);
  return join(storageRoot, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}
