// Transfer behaviours against a registry of our own (fake-registry.ts): redirects drop the
// Authorization header, Range resume after a cut connection (and a server that ignores Range),
// Retry-After on 503, a manifest that does not match its digest, and failpoint-driven resume
// against the real docker-registry.
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { openImage, writeOciLayout } from '../../src/registry/index.ts';
import { PivotError } from '../../src/errors.ts';
import { createLogger, setLogger } from '../../src/log.ts';
import { resetFailpoints } from '../../src/failpoints.ts';
import { buildOciLayout, gzip, OCI_LAYER_GZIP, OCI_LAYER_TAR, pushLayout, registryBlobPath, simpleTar, type BuiltImage } from '../helpers/oci-image.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { startFakeRegistry, type FakeRegistry } from './fake-registry.ts';
import { startTokenServer } from '../helpers/token-server.ts';
import { insecureConf, writeAuthFile } from './util.ts';

let tmp: string;
let img: BuiltImage;
const logs: string[] = [];
let fake: FakeRegistry | undefined;
let n = 0;
const out = (): string => join(tmp, `out-${++n}`);

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'nip-transfer-'));
  setLogger(createLogger({ level: 'info', sink: (l) => logs.push(l) }));
  // An uncompressed layer of random bytes: big enough to cut in the middle.
  img = await buildOciLayout(join(tmp, 'src'), {
    tag: 'v1',
    layers: [
      { data: await simpleTar({ big: randomBytes(600_000) }), mediaType: OCI_LAYER_TAR },
      { data: await gzip(await simpleTar({ small: 'x' })), mediaType: OCI_LAYER_GZIP },
    ],
  });
});
afterEach(async () => { await fake?.stop(); fake = undefined; delete process.env.NODE_IMAGE_PIVOT_FAILPOINTS; resetFailpoints(); });
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function pullFrom(host: string, ref: string, extra: object = {}) {
  const conf = insecureConf(mkdtempSync(join(tmp, 'conf-')), [host]);
  const image = await openImage(`${host}/${ref}`, { registriesConf: conf, timeouts: { pullSeconds: 60 }, ...extra });
  try {
    const dir = out();
    await writeOciLayout(image, dir);
    return { dir, stats: image.stats(), image };
  } finally {
    await image.close();
  }
}

describe('blob transfer', () => {
  it('follows a blob redirect to another host without the registry Authorization', async () => {
    fake = await startFakeRegistry(img.layoutDir, 'v1', { basic: { user: 'u', password: 'secret-pw' }, redirectBlobs: true });
    const authfile = writeAuthFile(tmp, { [fake.host]: { user: 'u', password: 'secret-pw' } }, 'redirect-auth.json');
    const { dir } = await pullFrom(fake.host, 'ns/app:v1', { authfile });
    expect(readdirSync(join(dir, 'blobs', 'sha256'))).toContain(img.layers[0]!.digest.slice(7));
    const cdn = fake.seen.filter((s) => s.server === 'cdn');
    expect(cdn.length).toBeGreaterThanOrEqual(3);
    expect(cdn.every((s) => s.authorization === undefined)).toBe(true);
    expect(fake.seen.filter((s) => s.server === 'registry' && s.path.includes('/blobs/')).every((s) => s.authorization?.startsWith('Basic '))).toBe(true);
  });

  it('resumes a cut connection with Range from the last good byte', async () => {
    fake = await startFakeRegistry(img.layoutDir, 'v1', { cutAfter: { bytes: 200_000, times: 1 } });
    const { stats } = await pullFrom(fake.host, 'ns/app:v1');
    const ranged = fake.seen.filter((s) => s.range !== undefined);
    expect(ranged).toHaveLength(1);
    expect(ranged[0]!.range).toMatch(/^bytes=\d+-$/);
    expect(Number(/\d+/.exec(ranged[0]!.range!)![0])).toBeGreaterThan(0);
    expect(stats.bytesResumed).toBeGreaterThan(0);
    // Everything was fetched exactly once plus nothing twice: resumed, not restarted.
    expect(stats.bytesFetched).toBe(img.layers.reduce((s, l) => s + l.size, 0) + (JSON.parse(img.manifest.toString()).config.size as number));
  });

  it('copes with a server that ignores Range (skips bytes it already has)', async () => {
    fake = await startFakeRegistry(img.layoutDir, 'v1', { cutAfter: { bytes: 100_000, times: 1 }, ignoreRange: true });
    const { dir } = await pullFrom(fake.host, 'ns/app:v1');
    expect(readdirSync(join(dir, 'blobs', 'sha256'))).toHaveLength(4);
  });

  it('retries a manifest request whose connection was dropped', async () => {
    fake = await startFakeRegistry(img.layoutDir, 'v1', { dropManifest: 1 });
    await pullFrom(fake.host, 'ns/app:v1');
    expect(fake.seen.filter((s) => s.path.includes('/manifests/')).length).toBe(2);
    expect(logs.some((l) => l.includes('retrying manifest'))).toBe(true);
  });

  it('honours Retry-After on 503', async () => {
    fake = await startFakeRegistry(img.layoutDir, 'v1', { unavailable: { times: 1, retryAfter: '1' } });
    const t0 = Date.now();
    await pullFrom(fake.host, 'ns/app:v1');
    expect(Date.now() - t0).toBeGreaterThanOrEqual(950);
  });

  it('treats a stalled body as a broken connection after readSeconds and resumes', async () => {
    fake = await startFakeRegistry(img.layoutDir, 'v1', { stallAfter: 150_000 });
    const { stats } = await pullFrom(fake.host, 'ns/app:v1', { timeouts: { pullSeconds: 60, readSeconds: 1 } });
    expect(stats.bytesResumed).toBe(150_000);
    expect(fake.seen.some((s) => s.range === 'bytes=150000-')).toBe(true);
  });

  it('gives up within the pull time budget when Retry-After asks for longer', async () => {
    fake = await startFakeRegistry(img.layoutDir, 'v1', { unavailable: { times: 100, retryAfter: '30' } });
    const t0 = Date.now();
    await expect(pullFrom(fake.host, 'ns/app:v1', { timeouts: { pullSeconds: 2 } })).rejects.toMatchObject({
      kind: 'network', facts: expect.objectContaining({ limit: 'timeouts.pullSeconds' }),
    });
    expect(Date.now() - t0).toBeLessThan(5_000);
  });

  it('fails with verification when the manifest does not match the digest asked for', async () => {
    fake = await startFakeRegistry(img.layoutDir, 'v1', { lyingManifest: Buffer.concat([img.manifest, Buffer.from(' ')]) });
    const err = await pullFrom(fake.host, `ns/app@${img.manifestDigest}`).catch((e: unknown) => e) as PivotError;
    expect(err).toBeInstanceOf(PivotError);
    expect(err.kind).toBe('verification');
    expect(err.exitCode).toBe(4);
    expect(err.message).toContain(`expected ${img.manifestDigest}`);
  });
});

describe('Bearer token refresh', () => {
  it('fetches a new token once when the registry answers 401 to a cached one', async () => {
    const ts = await startTokenServer({ dir: mkdtempSync(join(tmp, 'ts-')) });
    try {
      fake = await startFakeRegistry(img.layoutDir, 'v1', { bearer: { realm: ts.url, maxUses: 2 } });
      await pullFrom(fake.host, 'ns/app:v1');
      // Manifest, config and two layers at two uses per token: at least one refresh.
      expect(ts.requests.length).toBeGreaterThanOrEqual(2);
      expect(ts.requests.every((r) => r.scope === 'repository:ns/app:pull')).toBe(true);
    } finally {
      await ts.stop();
    }
  });

  it('gives up with an auth error when a fresh token is refused too', async () => {
    const ts = await startTokenServer({ dir: mkdtempSync(join(tmp, 'ts-')) });
    try {
      fake = await startFakeRegistry(img.layoutDir, 'v1', { bearer: { realm: ts.url, maxUses: 0 } });
      await expect(pullFrom(fake.host, 'ns/app:v1')).rejects.toMatchObject({ kind: 'auth', exitCode: 3 });
      expect(ts.requests).toHaveLength(1);
    } finally {
      await ts.stop();
    }
  });
});

describe('manifest limits', () => {
  it('refuses a manifest over 4 MiB', async () => {
    fake = await startFakeRegistry(img.layoutDir, 'v1', { lyingManifest: Buffer.alloc(4 * 1024 * 1024 + 1, 0x20) });
    await expect(pullFrom(fake.host, 'ns/app:v1')).rejects.toMatchObject({ kind: 'registry', message: expect.stringMatching(/over the 4194304-byte limit/) });
  });
});

describe('against docker-registry', () => {
  let reg: RunningRegistry;
  beforeAll(async () => {
    reg = await startRegistry();
    await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/app');
  });
  afterAll(async () => { await reg.stop(); });

  it('resumes after a mid-stream failure injected at registry.blob.chunk', async () => {
    process.env.NODE_IMAGE_PIVOT_FAILPOINTS = 'registry.blob.chunk:error=network@3';
    resetFailpoints();
    const { stats, dir } = await pullFrom(reg.host, 'ns/app:v1');
    expect(stats.bytesResumed).toBeGreaterThan(0);
    expect(readdirSync(join(dir, 'blobs', 'sha256'))).toHaveLength(4);
    expect(logs.some((l) => l.includes('retrying blob'))).toBe(true);
  });

  it('does not fetch verified blobs again from the cache dir, and resumes a *.partial', async () => {
    const cacheDir = join(tmp, 'cache');
    const first = await pullFrom(reg.host, 'ns/app:v1', { cacheDir });
    expect(first.stats.bytesFetched).toBeGreaterThan(0);
    const image = await openImage(`${reg.host}/ns/app:v1`, { registriesConf: insecureConf(mkdtempSync(join(tmp, 'c-')), [reg.host]), cacheDir });
    try {
      for (const l of image.layers) await image.fetchBlobToCache(l);
      const s = image.stats();
      expect(s.bytesFromCache).toBe(img.layers.reduce((a, l) => a + l.size, 0));
      // Only the config was fetched (openImage reads it), no layer bytes.
      expect(s.bytesFetched).toBe(image.configDescriptor.size);
    } finally {
      await image.close();
    }
    // A half-written blob in a fresh cache is resumed from where it stopped.
    const fresh = join(tmp, 'cache2');
    mkdirSync(fresh);
    const big = img.layers[0]!;
    const half = Math.floor(big.size / 2);
    writeFileSync(join(fresh, `${big.digest.slice(7)}.partial`), readFileSync(join(img.layoutDir, 'blobs', 'sha256', big.digest.slice(7))).subarray(0, half));
    const again = await openImage(`${reg.host}/ns/app:v1`, { registriesConf: insecureConf(mkdtempSync(join(tmp, 'c-')), [reg.host]), cacheDir: fresh });
    try {
      const path = await again.fetchBlobToCache(big);
      expect(readFileSync(path)).toHaveLength(big.size);
      expect(again.stats().bytesResumed).toBe(half);
      expect(again.stats().bytesFetched).toBe(again.configDescriptor.size + big.size - half);
    } finally {
      await again.close();
    }
  });

  it('openBlob streams fail with verification at the end when the bytes are corrupt', async () => {
    const one = await buildOciLayout(join(tmp, 'ob'), { tag: 'c', layers: [{ data: await gzip(await simpleTar({ f: randomBytes(50_000) })), mediaType: OCI_LAYER_GZIP }] });
    await pushLayout(one.layoutDir, 'c', reg.host, 'ns/ob');
    const path = registryBlobPath(reg.storageDir, one.layers[0]!.digest);
    const bytes = readFileSync(path);
    bytes.writeUInt8(bytes.readUInt8(100) ^ 1, 100);
    writeFileSync(path, bytes);
    const image = await openImage(`${reg.host}/ns/ob:c`, { registriesConf: insecureConf(mkdtempSync(join(tmp, 'c-')), [reg.host]) });
    try {
      let seen = 0;
      const sink = new Writable({ write(c: Buffer, _e, cb) { seen += c.length; cb(); } });
      const err = await pipeline(await image.openBlob(image.layers[0]!), sink).catch((e: unknown) => e) as PivotError;
      expect(err).toMatchObject({ kind: 'verification', exitCode: 4 });
      expect(err.message).toContain(`blob ${one.layers[0]!.digest}`);
      expect(seen).toBe(one.layers[0]!.size);
    } finally {
      await image.close();
    }
  });

  it('stops at the registry.blob failpoint with the injected error', async () => {
    process.env.NODE_IMAGE_PIVOT_FAILPOINTS = 'registry.blob:error=registry@2';
    resetFailpoints();
    await expect(pullFrom(reg.host, 'ns/app:v1')).rejects.toMatchObject({ kind: 'registry' });
  });
});
