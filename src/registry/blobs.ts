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
import { log } from '../log.ts';
import { guardedChunks, isDeadline, type PullBudget } from './bounds.ts';
import type { RegistrySession } from './session.ts';
import {
  backoffDelay, DEFAULT_BACKOFF, isRetryableError, parseRetryAfter, rangeHeader, resumePlan, sleep, TRANSIENT_STATUS, type Backoff, type Timeouts,
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

class Transient extends Error {
  readonly retryAfterMs: number | undefined;
  constructor(message: string, retryAfterMs?: number) {
    super(message);
    this.retryAfterMs = retryAfterMs;
  }
}

function isTransient(err: unknown): boolean {
  return err instanceof Transient || isRetryableError(err);
}

function describe(err: unknown): string {
  return err instanceof PivotError ? err.message : err instanceof Error ? `${(err as NodeJS.ErrnoException).code ?? ''} ${err.message}`.trim() : String(err);
}

/**
 * Yields the blob's bytes from `offset` on, hashing into `hash` (which must already cover bytes
 * before `offset`). Throws a verification error when the bytes do not match the descriptor.
 */
export async function* verifiedChunks(ctx: BlobContext, desc: LayerDescriptor, offset = 0, hash: Hash = createHash('sha256')): AsyncGenerator<Buffer> {
  const backoff = ctx.backoff ?? DEFAULT_BACKOFF;
  const tried: string[] = [];
  let lastError: unknown;
  let requests = 0;
  const initial = offset;
  const what = `blob ${desc.digest}`;
  const budgetSpent = (src: BlobSource): PivotError => ctx.budget.error(src.session.registry, `${what} (${src.name})`, describe(lastError));
  failpoint('registry.blob');
  for (let s = 0; s < ctx.sources.length; s++) {
    const src = ctx.sources[s]!;
    for (let attempt = 0; attempt < backoff.maxAttempts; attempt++) {
      if (attempt > 0) {
        const retryAfter = lastError instanceof Transient ? lastError.retryAfterMs : undefined;
        const wait = retryAfter ?? backoffDelay(attempt - 1, backoff);
        if (ctx.budget.expired(Date.now() + wait)) throw budgetSpent(src);
        log().warn({ blob: desc.digest, source: src.name, attempt, waitMs: wait, offset, reason: describe(lastError) }, 'retrying blob');
        await sleep(wait);
      } else if (requests > 0 && ctx.budget.expired()) {
        throw budgetSpent(src);
      }
      const range = rangeHeader(offset);
      requests++;
      let res;
      try {
        res = await src.session.request(`/v2/${src.repository}/blobs/${desc.digest}`, src.repository, {
          headers: range ? { range } : {},
          what,
          budget: ctx.budget,
        });
      } catch (err) {
        if (isDeadline(err)) throw err;
        lastError = err;
        if (isTransient(err)) continue;
        break;
      }
      if (res.statusCode === 404) {
        await res.body.dump();
        lastError = new PivotError('registry', `blob ${desc.digest} is not in ${src.name} (HTTP 404)`, {
          fix: 'the image is incomplete in that registry: re-push it',
          facts: { blob: desc.digest, source: src.name },
        });
        break;
      }
      if (TRANSIENT_STATUS.has(res.statusCode)) {
        await res.body.dump();
        lastError = new Transient(`HTTP ${res.statusCode}`, parseRetryAfter(res.headers['retry-after']));
        continue;
      }
      const plan = resumePlan(res.statusCode, res.headers['content-range'] as string | undefined, offset);
      if ('error' in plan) {
        await res.body.dump();
        lastError = new PivotError('registry', `blob ${desc.digest} from ${src.name}: ${plan.error}`, { fix: 'check the registry', facts: { blob: desc.digest } });
        break;
      }
      if (requests > 1 && plan.skip === 0) ctx.stats.bytesResumed += offset - initial;
      let skip = plan.skip;
      const before = offset;
      try {
        for await (const raw of guardedChunks(res.body, { host: res.host, what, timeouts: ctx.timeouts, budget: ctx.budget })) {
          let chunk = raw;
          if (skip > 0) {
            const n = Math.min(skip, chunk.length);
            skip -= n;
            chunk = chunk.subarray(n);
            if (chunk.length === 0) continue;
          }
          if (offset + chunk.length > desc.size) {
            throw verificationError(desc, src.name, `is larger than the ${desc.size} bytes the manifest says`, { expectedSize: desc.size });
          }
          hash.update(chunk);
          offset += chunk.length;
          ctx.stats.bytesFetched += chunk.length;
          failpoint('registry.blob.chunk');
          yield chunk;
        }
      } catch (err) {
        if (err instanceof PivotError && err.kind === 'verification') throw err;
        lastError = err;
        if (isTransient(err)) {
          // Only progress earns a fresh attempt budget: a server that stalls before the first
          // byte every time must run out of attempts, not loop until the process is killed.
          if (offset > before) {
            attempt = -1;
            log().warn({ blob: desc.digest, source: src.name, offset, reason: describe(err) }, 'resuming blob after a broken transfer');
          }
          continue;
        }
        throw err;
      }
      if (offset < desc.size) {
        lastError = new Transient(`connection closed at byte ${offset} of ${desc.size}`);
        continue;
      }
      const got = `sha256:${hash.digest('hex')}`;
      if (got !== desc.digest) throw verificationError(desc, src.name, `has digest ${got}`, { actual: got });
      log().info({ blob: desc.digest, size: desc.size, source: src.name, skipped: [...ctx.skipped, ...tried.map((t) => ({ name: t, reason: 'failed for this blob' }))] }, 'blob verified');
      return;
    }
    tried.push(src.name);
    if (s + 1 < ctx.sources.length) log().warn({ blob: desc.digest, source: src.name, reason: describe(lastError) }, 'blob source failed, trying the next one');
  }
  if (lastError instanceof PivotError) throw lastError;
  throw new PivotError('network', `blob ${desc.digest} could not be fetched from ${tried.join(', ')}: ${describe(lastError)}`, {
    fix: 'check the network path to the registry and retry',
    facts: { blob: desc.digest },
    cause: lastError,
  });
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
