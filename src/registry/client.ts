// Opening an image: registries.conf sources in order, the manifest (verified, capped, platform
// chosen from an index), the config, and verified blob access for the caller.
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { DEFAULT_CONCURRENCY, DEFAULT_REGISTRIES_CONF, DEFAULT_TIMEOUTS } from '../config.ts';
import { PivotError } from '../errors.ts';
import { failpoint } from '../failpoints.ts';
import { log } from '../log.ts';
import { authFileCandidates, readAuthFiles } from './auth.ts';
import {
  fetchBlobToDir, openBlobStream, verifiedChunks, type BlobContext, type BlobSource, type BlobStats, type LayerDescriptor,
} from './blobs.ts';
import { isDeadline, MAX_CONFIG_BYTES, MAX_ERROR_BODY_BYTES, MAX_MANIFEST_BYTES, PullBudget, readCapped } from './bounds.ts';
import {
  hostPlatform, MANIFEST_ACCEPT, parseManifest, parsePlatform, platformString, selectPlatform,
  type Descriptor, type Platform,
} from './manifest.ts';
import { loadRegistriesConf, planReference, type Source } from './mirrors.ts';
import { refSuffix, type ImageReference } from './reference.ts';
import { SessionPool, type RegistrySession } from './session.ts';
import {
  DEFAULT_BACKOFF, isRetryableError, parseRetryAfter, retryWaitMs, sleep, TransientFailure, TRANSIENT_STATUS, type Timeouts,
} from './transport.ts';

export interface RegistryOptions {
  authfile?: string;
  registriesConf?: string;
  certDir?: string;
  /** OS/ARCH[/VARIANT]; default: this host. */
  platform?: string;
  /** Blobs fetched at once by fetchAll-style callers (default 3). */
  concurrency?: number;
  /** Digest-keyed blob cache (staging dir); verified blobs there are never fetched again. */
  cacheDir?: string;
  timeouts?: Partial<Timeouts>;
}

export interface OpenedImage {
  reference: ImageReference;
  /** Digest of the image manifest (the platform's, when the reference names an index). */
  manifestDigest: string;
  /** Digest of the index the reference named, when it named one. */
  indexDigest?: string;
  manifestBytes: Buffer;
  manifestMediaType: string;
  /** The image config as fetched (verified, and checked to be JSON). */
  configBytes: Buffer;
  configDescriptor: LayerDescriptor;
  platform: Platform;
  layers: LayerDescriptor[];
  /** registry/repository of the source that served the manifest. */
  source: string;
  concurrency: number;
  /** A verified stream: a digest/size mismatch errors at the end with kind 'verification'. */
  openBlob(layer: LayerDescriptor): Promise<Readable>;
  /** Fetches into the cache (or `dir`) and returns the file path. */
  fetchBlobToCache(layer: LayerDescriptor, dir?: string): Promise<string>;
  stats(): BlobStats;
  close(): Promise<void>;
}

function errorCodes(text: string): string {
  try {
    const doc = JSON.parse(text) as { errors?: Array<{ code?: string }> };
    return (doc.errors ?? []).map((e) => e.code).filter(Boolean).slice(0, 5).join(', ');
  } catch {
    return '';
  }
}

interface FetchedManifest { bytes: Buffer; contentType: string | undefined; digest: string }

async function fetchManifestOnce(session: RegistrySession, repository: string, reference: string, expectedDigest: string | undefined, budget: PullBudget, what: string, lastAttempt: boolean): Promise<FetchedManifest> {
  const res = await session.request(`/v2/${repository}/manifests/${reference}`, repository, { headers: { accept: MANIFEST_ACCEPT }, what, budget });
  const guard = { host: res.host, what, timeouts: session.timeouts, budget };
  if (TRANSIENT_STATUS.has(res.statusCode) && !lastAttempt) {
    await res.body.dump();
    throw new TransientFailure(`HTTP ${res.statusCode}`, parseRetryAfter(res.headers['retry-after']));
  }
  if (res.statusCode !== 200) {
    const text = await readCapped(res.body, MAX_ERROR_BODY_BYTES, guard).then((b) => b.toString(), () => '');
    const codes = errorCodes(text);
    const notFound = res.statusCode === 404;
    throw new PivotError('registry', `${what}: HTTP ${res.statusCode}${codes ? ` ${codes}` : ''}${notFound ? ' (no such repository or tag)' : ''}`, {
      fix: notFound ? 'check the image name and tag, and that the image was pushed to this registry' : 'retry later; if it persists, check the registry',
      facts: { status: res.statusCode, registry: session.registry, host: res.host, repository, reference },
      permanent: notFound,
    });
  }
  const bytes = await readCapped(res.body, MAX_MANIFEST_BYTES, guard, res.headers['content-length']);
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  const claimed = res.headers['docker-content-digest'];
  const expected = expectedDigest ?? (typeof claimed === 'string' && claimed.startsWith('sha256:') ? claimed : undefined);
  if (expected !== undefined && digest !== expected) {
    throw new PivotError('verification', `${what} has digest ${digest}, expected ${expected}`, {
      fix: 'the registry or mirror serves a different manifest than the digest names: re-push the image or remove that mirror',
      facts: { expected, actual: digest, registry: session.registry },
    });
  }
  const ct = res.headers['content-type'];
  return { bytes, contentType: typeof ct === 'string' ? ct : undefined, digest };
}

/** GETs one manifest, verifying its digest when one is expected. Retries as blobs do (transport.ts isRetryableError). */
async function fetchManifest(session: RegistrySession, repository: string, reference: string, expectedDigest: string | undefined, budget: PullBudget): Promise<FetchedManifest> {
  const what = `manifest ${session.registry}/${repository}${reference.startsWith('sha256:') ? '@' : ':'}${reference}`;
  failpoint('registry.manifest');
  const lastAttempt = DEFAULT_BACKOFF.maxAttempts - 1;
  for (let attempt = 0; ; attempt++) {
    try {
      return await fetchManifestOnce(session, repository, reference, expectedDigest, budget, what, attempt >= lastAttempt);
    } catch (err) {
      if (!isRetryableError(err) || attempt >= lastAttempt) throw err;
      const wait = retryWaitMs(err, attempt);
      if (budget.expired(Date.now() + wait)) {
        throw budget.error(session.registry, what, err instanceof Error ? err.message : String(err));
      }
      log().warn({ manifest: what, attempt, waitMs: wait, reason: (err as Error).message }, 'retrying manifest');
      await sleep(wait);
    }
  }
}

interface Resolved {
  source: Source;
  manifestBytes: Buffer;
  manifestMediaType: string;
  manifestDigest: string;
  indexDigest?: string;
  config: Descriptor;
  layers: Descriptor[];
  platform: Platform;
}

async function resolveAt(session: RegistrySession, source: Source, wanted: Platform, explicitPlatform: boolean, budget: PullBudget): Promise<Resolved> {
  const ref = source.ref;
  const selector = ref.digest ?? ref.tag ?? 'latest';
  const what = `${source.name}:${refSuffix(ref)}`;
  const top = await fetchManifest(session, ref.repository, selector, ref.digest, budget);
  let parsed = parseManifest(top.bytes, top.contentType, `manifest ${what}`);
  let bytes = top.bytes;
  let digest = top.digest;
  let indexDigest: string | undefined;
  let platform: Platform | undefined;
  if (parsed.kind === 'index') {
    const chosen = selectPlatform(parsed.manifests, wanted, `image index ${what}`, explicitPlatform);
    indexDigest = top.digest;
    platform = chosen.platform;
    const child = await fetchManifest(session, ref.repository, chosen.digest, chosen.digest, budget);
    parsed = parseManifest(child.bytes, child.contentType ?? chosen.mediaType, `manifest ${source.name}@${chosen.digest}`);
    if (parsed.kind !== 'image') throw new PivotError('registry', `image index ${what} points at another index for ${platformString(wanted)}`, { fix: 'flatten the index when pushing', permanent: true });
    bytes = child.bytes;
    digest = child.digest;
  }
  return {
    source, manifestBytes: bytes, manifestMediaType: parsed.mediaType, manifestDigest: digest,
    ...(indexDigest ? { indexDigest } : {}),
    config: parsed.config, layers: parsed.layers, platform: platform ?? wanted,
  };
}

async function readConfig(ctx: BlobContext, desc: Descriptor): Promise<Buffer> {
  if (desc.size > MAX_CONFIG_BYTES) throw new PivotError('registry', `image config ${desc.digest} is ${desc.size} bytes, over the ${MAX_CONFIG_BYTES}-byte limit`, { fix: 'check the image', permanent: true });
  const chunks: Buffer[] = [];
  for await (const c of verifiedChunks(ctx, desc)) chunks.push(c);
  return Buffer.concat(chunks);
}

function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new PivotError('registry', `${what} is not valid JSON`, { fix: 'rebuild or re-push the image', permanent: true });
  }
}

/** Resolves the reference through registries.conf, fetches manifest and config. See index.ts. */
export async function openImage(refText: string, opts: RegistryOptions = {}): Promise<OpenedImage> {
  const timeouts: Timeouts = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
  const budget = new PullBudget(timeouts.pullSeconds);
  const conf = loadRegistriesConf(opts.registriesConf ?? DEFAULT_REGISTRIES_CONF, opts.registriesConf !== undefined);
  const plan = planReference(refText, conf);
  let reference = plan.reference;
  const explicitPlatform = opts.platform !== undefined;
  const wanted = opts.platform ? parsePlatform(opts.platform) : hostPlatform();
  const authSearch = authFileCandidates(opts.authfile);
  const authFiles = readAuthFiles(authSearch, opts.authfile !== undefined);
  const authPaths = authFiles.map((f) => f.path);
  const pool = new SessionPool({ authFiles, authSearch: authPaths.length ? authPaths : authSearch, ...(opts.certDir ? { certDir: opts.certDir } : {}), timeouts });
  const skipped = [...plan.skipped];
  for (const s of skipped) log().info({ image: reference.toString(), source: s.name, reason: s.reason }, 'source skipped');

  let resolved: Resolved | undefined;
  let lastError: unknown;
  let servedIndex = -1;
  try {
    for (let i = 0; i < plan.sources.length; i++) {
      const source = plan.sources[i]!;
      try {
        resolved = await resolveAt(pool.get(source.ref.registry, source.insecure), source, wanted, explicitPlatform, budget);
        servedIndex = i;
        reference = source.original;
        break;
      } catch (err) {
        lastError = err;
        const e = err as PivotError;
        if (e instanceof PivotError && (e.kind === 'usage' || e.reason === 'no-platform' || isDeadline(e))) throw e;
        const reason = err instanceof Error ? err.message : String(err);
        skipped.push({ name: source.name, reason });
        if (i + 1 < plan.sources.length) log().warn({ image: reference.toString(), source: source.name, reason }, 'source failed, trying the next one');
      }
    }
    if (!resolved) throw lastError;

    const r = resolved;
    // Later sources for the same image only: a short name's other search registries hold other images.
    const blobSources: BlobSource[] = plan.sources.slice(servedIndex).filter((s) => s.original === r.source.original).map((s) => ({
      session: pool.get(s.ref.registry, s.insecure), repository: s.ref.repository, name: s.name,
    }));
    const stats: BlobStats = { bytesFetched: 0, bytesResumed: 0, bytesFromCache: 0 };
    const ctx: BlobContext = { sources: blobSources, skipped, budget, timeouts, stats, inflight: new Map(), ...(opts.cacheDir ? { cacheDir: opts.cacheDir } : {}) };
    const configBytes = await readConfig(ctx, r.config);
    parseJson(configBytes, `image config ${r.config.digest}`);
    log().info({ image: reference.toString(), source: r.source.name, manifestDigest: r.manifestDigest, platform: platformString(r.platform), layers: r.layers.length }, 'manifest resolved');
    const strip = (d: Descriptor): LayerDescriptor => ({ digest: d.digest, size: d.size, mediaType: d.mediaType });
    return {
      reference,
      manifestDigest: r.manifestDigest,
      ...(r.indexDigest ? { indexDigest: r.indexDigest } : {}),
      manifestBytes: r.manifestBytes,
      manifestMediaType: r.manifestMediaType,
      configBytes,
      configDescriptor: strip(r.config),
      platform: r.platform,
      layers: r.layers.map(strip),
      source: r.source.name,
      concurrency: opts.concurrency ?? DEFAULT_CONCURRENCY,
      openBlob: (layer) => openBlobStream(ctx, layer),
      fetchBlobToCache: (layer, dir) => fetchBlobToDir(ctx, layer, dir),
      stats: () => ({ ...stats }),
      close: async () => {
        budget.close();
        await pool.close();
      },
    };
  } catch (err) {
    budget.close();
    await pool.close();
    throw err;
  }
}
