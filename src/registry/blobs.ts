// Blobs as verified streams: sha256 and size are checked as bytes pass, a broken connection
// resumes with Range from the last good byte, transient failures back off with jitter (and
// honour Retry-After), all inside one time budget. A digest-keyed cache directory makes a rerun
// skip blobs it already verified; a *.partial file there is resumed, not restarted.
import { createHash, type Hash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, link, mkdir, open, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { PivotError, isErrno } from '../errors.ts';
import { failpoint } from '../failpoints.ts';
import { bytesMoved } from '../gc-pacer.ts';
import { log } from '../log.ts';
import { guardedChunks, isDeadline, type PullBudget } from './bounds.ts';
import type { RegistrySession } from './session.ts';
import {
  DEFAULT_BACKOFF, isRetryableError, parseRetryAfter, rangeHeader, resumePlan, retryWaitMs, sleep, TransientFailure, TRANSIENT_STATUS, type Backoff, type Timeouts,
} from './transport.ts';

export interface LayerDescriptor {
  digest: string;
  size: number;
  mediaType: string;
}

export interface BlobSource {
  session: RegistrySession;
  repository: string;
  /** registry/repository, for logs. */
  name: string;
}

export interface BlobStats {
  bytesFetched: number;
  /** Bytes not fetched again thanks to Range resumes (within a run or from a *.partial). */
  bytesResumed: number;
  bytesFromCache: number;
}

export interface BlobContext {
  /** In order of preference; sources known to be down are already left out by the caller. */
  sources: BlobSource[];
  /** Why sources were left out, logged with each blob. */
  skipped: Array<{ name: string; reason: string }>;
  /** The pull's deadline: no retry starts after it, and it aborts a transfer in flight. */
  budget: PullBudget;
  timeouts: Timeouts;
  backoff?: Backoff;
  stats: BlobStats;
  cacheDir?: string;
  /**
   * Fetches under way, by destination file: an image may list one layer several times, and
   * every use after the first waits for the one download instead of sharing its *.partial.
   */
  inflight: Map<string, Promise<string>>;
}

function verificationError(desc: LayerDescriptor, source: string, message: string, facts: Record<string, unknown>): PivotError {
  return new PivotError('verification', `blob ${desc.digest} from ${source} ${message}`, {
    fix: 'the registry or mirror serves corrupt data: re-push the image there or remove that mirror from registries.conf',
    facts: { blob: desc.digest, source, ...facts },
  });
}

function describe(err: unknown): string {
  return err instanceof PivotError ? err.message : err instanceof Error ? `${(err as NodeJS.ErrnoException).code ?? ''} ${err.message}`.trim() : String(err);
}

/** Where one blob's transfer stands, across attempts and sources. */
interface Transfer {
  desc: LayerDescriptor;
  what: string;
  /** Bytes hashed and yielded so far. */
  offset: number;
  /** Where this call started (a *.partial file's length). */
  readonly initial: number;
  requests: number;
  lastError: unknown;
  hash: Hash;
}

/** How one attempt ended, when it did not throw. */
type AttemptEnd = 'verified' | 'retry' | 'resumed' | 'next-source';

/**
 * Yields the blob's bytes from `offset` on, hashing into `hash` (which must already cover bytes
 * before `offset`). Throws a verification error when the bytes do not match the descriptor.
 * Sources in order; at each, attempts with the one retry policy (transport.ts).
 */
export async function* verifiedChunks(ctx: BlobContext, desc: LayerDescriptor, offset = 0, hash: Hash = createHash('sha256')): AsyncGenerator<Buffer> {
  const t: Transfer = { desc, what: `blob ${desc.digest}`, offset, initial: offset, requests: 0, lastError: undefined, hash };
  const tried: string[] = [];
  failpoint('registry.blob');
  for (let s = 0; s < ctx.sources.length; s++) {
    const src = ctx.sources[s]!;
    if (yield* fromSource(ctx, src, t)) {
      log().info({ blob: desc.digest, size: desc.size, source: src.name, skipped: [...ctx.skipped, ...tried.map((n) => ({ name: n, reason: 'failed for this blob' }))] }, 'blob verified');
      return;
    }
    tried.push(src.name);
    if (s + 1 < ctx.sources.length) log().warn({ blob: desc.digest, source: src.name, reason: describe(t.lastError) }, 'blob source failed, trying the next one');
  }
  if (t.lastError instanceof PivotError) throw t.lastError;
  throw new PivotError('network', `blob ${desc.digest} could not be fetched from ${tried.join(', ')}: ${describe(t.lastError)}`, {
    fix: 'check the network path to the registry and retry',
    facts: { blob: desc.digest },
    cause: t.lastError,
  });
}

/** Attempts at one source until the blob is verified (true) or the source is given up (false). */
async function* fromSource(ctx: BlobContext, src: BlobSource, t: Transfer): AsyncGenerator<Buffer, boolean> {
  const backoff = ctx.backoff ?? DEFAULT_BACKOFF;
  const budgetSpent = (): PivotError => ctx.budget.error(src.session.registry, `${t.what} (${src.name})`, describe(t.lastError));
  for (let attempt = 0; attempt < backoff.maxAttempts; attempt++) {
    if (attempt > 0) {
      const wait = retryWaitMs(t.lastError, attempt - 1, backoff);
      if (ctx.budget.expired(Date.now() + wait)) throw budgetSpent();
      log().warn({ blob: t.desc.digest, source: src.name, attempt, waitMs: wait, offset: t.offset, reason: describe(t.lastError) }, 'retrying blob');
      await sleep(wait);
    } else if (t.requests > 0 && ctx.budget.expired()) {
      throw budgetSpent();
    }
    const end = yield* oneAttempt(ctx, src, t);
    if (end === 'verified') return true;
    if (end === 'next-source') return false;
    // Only progress earns a fresh attempt budget: a server that stalls before the first byte
    // every time must run out of attempts, not loop until the process is killed.
    if (end === 'resumed') attempt = -1;
  }
  return false;
}

/** One request at one source, from the current offset. */
async function* oneAttempt(ctx: BlobContext, src: BlobSource, t: Transfer): AsyncGenerator<Buffer, AttemptEnd> {
  const { desc } = t;
  const range = rangeHeader(t.offset);
  t.requests++;
  let res;
  try {
    res = await src.session.request(`/v2/${src.repository}/blobs/${desc.digest}`, src.repository, { headers: range ? { range } : {}, what: t.what, budget: ctx.budget });
  } catch (err) {
    if (isDeadline(err)) throw err;
    t.lastError = err;
    return isRetryableError(err) ? 'retry' : 'next-source';
  }
  if (res.statusCode === 404) {
    await res.body.dump();
    t.lastError = new PivotError('registry', `blob ${desc.digest} is not in ${src.name} (HTTP 404)`, {
      fix: 'the image is incomplete in that registry: re-push it',
      facts: { blob: desc.digest, source: src.name },
    });
    return 'next-source';
  }
  if (TRANSIENT_STATUS.has(res.statusCode)) {
    await res.body.dump();
    t.lastError = new TransientFailure(`HTTP ${res.statusCode}`, parseRetryAfter(res.headers['retry-after']));
    return 'retry';
  }
  const plan = resumePlan(res.statusCode, res.headers['content-range'] as string | undefined, t.offset);
  if ('error' in plan) {
    await res.body.dump();
    t.lastError = new PivotError('registry', `blob ${desc.digest} from ${src.name}: ${plan.error}`, { fix: 'check the registry', facts: { blob: desc.digest } });
    return 'next-source';
  }
  if (t.requests > 1 && plan.skip === 0) ctx.stats.bytesResumed += t.offset - t.initial;
  const before = t.offset;
  try {
    yield* bodyChunks(ctx, src, t, res.body, res.host, plan.skip);
  } catch (err) {
    if ((err instanceof PivotError && err.kind === 'verification') || !isRetryableError(err)) throw err;
    t.lastError = err;
    if (t.offset === before) return 'retry';
    log().warn({ blob: desc.digest, source: src.name, offset: t.offset, reason: describe(err) }, 'resuming blob after a broken transfer');
    return 'resumed';
  }
  if (t.offset < desc.size) {
    t.lastError = new TransientFailure(`connection closed at byte ${t.offset} of ${desc.size}`);
    return 'retry';
  }
  const got = `sha256:${t.hash.digest('hex')}`;
  if (got !== desc.digest) throw verificationError(desc, src.name, `has digest ${got}`, { actual: got });
  return 'verified';
}

/** The response body past the `skip` bytes a server that ignored Range sent again, hashed and counted. */
async function* bodyChunks(ctx: BlobContext, src: BlobSource, t: Transfer, body: AsyncIterable<unknown>, host: string, skip: number): AsyncGenerator<Buffer> {
  for await (const raw of guardedChunks(body, { host, what: t.what, timeouts: ctx.timeouts, budget: ctx.budget })) {
    let chunk = raw;
    if (skip > 0) {
      const n = Math.min(skip, chunk.length);
      skip -= n;
      chunk = chunk.subarray(n);
      if (chunk.length === 0) continue;
    }
    if (t.offset + chunk.length > t.desc.size) {
      throw verificationError(t.desc, src.name, `is larger than the ${t.desc.size} bytes the manifest says`, { expectedSize: t.desc.size });
    }
    t.hash.update(chunk);
    t.offset += chunk.length;
    ctx.stats.bytesFetched += chunk.length;
    bytesMoved(chunk.length);
    failpoint('registry.blob.chunk');
    yield chunk;
  }
}

/** Where a blob lives in a digest-keyed directory (the cache, or an OCI layout's blobs/sha256). */
export const cachePath = (dir: string, digest: string): string => join(dir, digest.replace(/^sha256:/, ''));

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}

/** The cached, verified copy of a blob, if there is one. */
async function cachedBlob(dir: string | undefined, desc: LayerDescriptor): Promise<string | undefined> {
  if (!dir) return undefined;
  const path = cachePath(dir, desc.digest);
  return (await sizeOf(path)) === desc.size ? path : undefined;
}

/** A verified stream of the blob, from the cache when present. */
export async function openBlobStream(ctx: BlobContext, desc: LayerDescriptor): Promise<Readable> {
  const cached = await cachedBlob(ctx.cacheDir, desc);
  if (cached) {
    ctx.stats.bytesFromCache += desc.size;
    log().info({ blob: desc.digest, size: desc.size, source: 'cache', path: cached }, 'blob served from the cache');
    return createReadStream(cached, { highWaterMark: 256 * 1024 });
  }
  return Readable.from(verifiedChunks(ctx, desc), { objectMode: false });
}

const WRITE_BATCH = 4 * 1024 * 1024;

/**
 * Writes with one writev per few MiB: on fast links per-chunk stream writes cost more CPU than
 * hashing, and batching keeps memory bounded by WRITE_BATCH all the same.
 */
async function writeChunks(chunks: AsyncIterable<Buffer>, path: string, append: boolean): Promise<void> {
  const fh = await open(path, append ? 'a' : 'w');
  let batch: Buffer[] = [];
  let size = 0;
  try {
    for await (const c of chunks) {
      batch.push(c);
      size += c.length;
      if (size >= WRITE_BATCH) {
        const full = batch;
        batch = [];
        size = 0;
        await fh.writev(full);
      }
    }
  } finally {
    // Also on a broken transfer: every byte received so far was hashed in order and is what a
    // rerun resumes from, so it must reach the *.partial file (a verification failure unlinks it).
    try {
      if (batch.length) await fh.writev(batch);
    } finally {
      await fh.close();
    }
  }
}

/**
 * Fetches into `dir` (default: the cache) as HEX.partial, verified, then renamed to HEX. A second
 * call for the same blob and directory while the first runs waits for it and shares its result.
 */
export function fetchBlobToDir(ctx: BlobContext, desc: LayerDescriptor, dir = ctx.cacheDir): Promise<string> {
  if (!dir) return Promise.reject(new PivotError('internal', 'fetchBlobToDir needs a cache directory', { fix: 'pass cacheDir in RegistryOptions' }));
  const key = cachePath(dir, desc.digest);
  const running = ctx.inflight.get(key);
  if (running) return running;
  const started = fetchInto(ctx, desc, dir).finally(() => ctx.inflight.delete(key));
  ctx.inflight.set(key, started);
  return started;
}

async function fetchInto(ctx: BlobContext, desc: LayerDescriptor, dir: string): Promise<string> {
  await mkdir(dir, { recursive: true });
  const final = cachePath(dir, desc.digest);
  if ((await sizeOf(final)) === desc.size) {
    ctx.stats.bytesFromCache += desc.size;
    log().info({ blob: desc.digest, size: desc.size, source: 'cache', path: final }, 'blob already in the cache');
    return final;
  }
  if (ctx.cacheDir && dir !== ctx.cacheDir) {
    // Fill the shared cache first so a rerun finds it there; the copy is a hardlink when it can be.
    const cached = await fetchBlobToDir(ctx, desc, ctx.cacheDir);
    if ((await sizeOf(final)) !== desc.size) {
      await unlink(final).catch(() => undefined);
      await link(cached, final).catch(() => copyFile(cached, final));
    }
    return final;
  }
  const partial = `${final}.partial`;
  let have = (await sizeOf(partial)) ?? 0;
  const hash = createHash('sha256');
  if (have > desc.size) {
    await unlink(partial);
    have = 0;
  } else if (have > 0) {
    for await (const c of createReadStream(partial)) hash.update(c as Buffer);
    ctx.stats.bytesResumed += have;
    log().info({ blob: desc.digest, offset: have }, 'resuming blob from a partial download');
  }
  try {
    await writeChunks(verifiedChunks(ctx, desc, have, hash), partial, have > 0);
  } catch (err) {
    // A mismatch means the partial bytes cannot be trusted either; anything else is resumable.
    if (err instanceof PivotError && err.kind === 'verification') await unlink(partial).catch(() => undefined);
    throw err;
  }
  await rename(partial, final);
  return final;
}

/** Runs `fn` over `items` with at most `limit` in flight; fails fast on the first error. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  let failed: unknown;
  const worker = async (): Promise<void> => {
    while (failed === undefined && next < items.length) {
      const i = next++;
      try {
        out[i] = await fn(items[i]!, i);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker));
  if (failed !== undefined) throw failed;
  return out;
}
