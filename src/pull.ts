// The registry client's verified blob streams, straight into the unpacker: `pull IMAGE --dest DIR`
// and the pivot's pull phase. It sits above both, so unpack/ knows nothing of registries and
// registry/ nothing of trees.
// The tree is built in DIR.partial and renamed to DIR only once every layer is in and verified,
// so a failed or killed pull never leaves a plausible-looking DIR behind.
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { PivotError } from './errors.ts';
import { log } from './log.ts';
import { mapLimit, openImage, type BlobStats, type OpenedImage, type RegistryOptions } from './registry/index.ts';
import { bootcImageOf, unpackLayers, type BootcImage, type LayerSource, type UnpackOptions, type UnpackSummary } from './unpack/index.ts';

export interface PullToDestSummary extends UnpackSummary {
  image: string;
  manifestDigest: string;
  source: string;
  dest: string;
  /** Bytes fetched, resumed and served from the blob cache. */
  transfer: BlobStats;
  /** Set for a bootable (bootc / ostree-native) image, unpacked with bootc's rules. */
  bootc?: BootcImage;
}

export async function pullToDest(ref: string, dest: string, registry: RegistryOptions, unpack: UnpackOptions): Promise<PullToDestSummary> {
  const started = process.hrtime.bigint();
  const dir = resolve(dest);
  if (existsSync(dir)) {
    throw new PivotError('usage', `destination ${dir} already exists`, {
      path: dir,
      fix: 'remove it or choose another --dest; pull never unpacks over an existing tree',
    });
  }
  const partial = `${dir}.partial`;
  // A leftover from an interrupted pull is ours by name and incomplete by definition.
  rmSync(partial, { recursive: true, force: true });
  // Before any download: an unwritable or full staging directory is a clear unpack error, not
  // a raw errno from deep inside the unpacker.
  try {
    mkdirSync(partial, { recursive: true, mode: 0o755 });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new PivotError('unpack', `cannot create the staging directory ${partial}: ${code}`, {
      path: partial,
      fix: 'make its parent directory writable by root (and not read-only), or choose another --dest / stagingDir',
      facts: { code },
      cause: err,
    });
  }
  const image = await openImage(ref, registry).catch((err: unknown) => {
    rmSync(partial, { recursive: true, force: true });
    throw err;
  });
  const inFlight: Verifiable[] = [];
  // With a blob cache (the pivot's staging), layers download ahead, `concurrency` at a time, into
  // verified files, while earlier ones unpack; a rerun after a failure reuses what is there.
  // Without one (pull --dest), each layer streams straight from the registry into the unpacker.
  const prefetch = registry.cacheDir ? startPrefetch(image) : undefined;
  try {
    const layers: LayerSource[] = image.layers.map((l, i) => {
      if (prefetch) return { ...l, open: async () => { await prefetch.ready(i); return image.openBlob(l); } };
      const v = keepVerifiable(() => image.openBlob(l));
      inFlight.push(v);
      return { ...l, open: v.open };
    });
    // The config labels say whether this is a bootable image, and where its ostree layers end.
    const bootc = unpack.bootc ?? bootcImageOf(image.configBytes, image.layers.length);
    log().info({
      image: image.reference.toString(), manifestDigest: image.manifestDigest, layers: layers.length, dest: dir,
      ...(bootc ? { ostreeCommit: bootc.ostreeCommit, version: bootc.version, derivedLayers: bootc.layerCount - bootc.firstDerivedLayer } : {}),
    }, 'unpacking image');
    const summary = await unpackLayers(partial, layers, { ...unpack, ...(bootc ? { bootc } : {}) });
    renameSync(partial, dir);
    return {
      ...summary,
      image: image.reference.toString(),
      manifestDigest: image.manifestDigest,
      source: image.source,
      dest: dir,
      transfer: image.stats(),
      ...(bootc ? { bootc } : {}),
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } catch (err) {
    rmSync(partial, { recursive: true, force: true });
    // Damaged bytes usually trip the tar parser or the inflater before the digest check at the
    // end of the blob; the operator must hear "the registry served wrong bytes" (exit 4), not
    // "the image is malformed" (exit 5). The rest of the layer is read (at most its manifest
    // size) to find out which it was.
    if (!(err instanceof PivotError && (err.kind === 'verification' || err.kind === 'network'))) {
      for (const v of inFlight) {
        const mismatch = await v.verifyRest();
        if (mismatch) throw mismatch;
      }
    }
    throw err;
  } finally {
    // Downloads still running after a failure finish into the cache (the retry wants them);
    // closing the connections under them would only turn them into errors.
    await prefetch?.settled();
    await image.close();
  }
}

interface Prefetch {
  /** Resolves when layer i is in the cache, verified; rejects with the first download failure. */
  ready(i: number): Promise<void>;
  settled(): Promise<void>;
}

function startPrefetch(image: OpenedImage): Prefetch {
  const waiters = image.layers.map(() => {
    let resolve!: () => void;
    let reject!: (err: unknown) => void;
    const promise = new Promise<void>((res, rej) => { resolve = res; reject = rej; });
    promise.catch(() => undefined); // a layer nobody waits for must not become an unhandled rejection
    return { promise, resolve, reject };
  });
  const all = mapLimit(image.layers, image.concurrency, async (layer, i) => {
    await image.fetchBlobToCache(layer);
    waiters[i]!.resolve();
  }).catch((err: unknown) => {
    // mapLimit stops starting downloads after the first failure: fail every layer still waiting.
    for (const w of waiters) w.reject(err);
  });
  return {
    ready: (i) => waiters[i]!.promise,
    settled: async () => { await all; },
  };
}

interface Verifiable {
  open(): Promise<Readable>;
  /** Reads what the unpacker left unread; returns the verification error if the digest is wrong. */
  verifyRest(): Promise<PivotError | undefined>;
}

/**
 * Hands the unpacker a stream whose early close does not end the verified blob iterator under
 * it, so that after an unpack failure the rest of the blob can still be checked.
 */
function keepVerifiable(open: () => Promise<Readable>): Verifiable {
  let stream: Readable | undefined;
  let inner: AsyncIterator<Buffer> | undefined;
  let settled = false;
  return {
    async open() {
      stream = await open();
      const it = stream[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
      inner = it;
      return Readable.from({
        [Symbol.asyncIterator]: () => ({
          next: async () => {
            try {
              const r = await it.next();
              if (r.done) settled = true;
              return r;
            } catch (err) {
              settled = true;
              throw err;
            }
          },
          return: async () => ({ done: true as const, value: undefined }),
        }),
      });
    },
    async verifyRest() {
      if (!inner || settled) return undefined;
      settled = true;
      try {
        for (let r = await inner.next(); !r.done; r = await inner.next()) { /* the verifier hashes as it goes */ }
        return undefined;
      } catch (err) {
        return err instanceof PivotError && err.kind === 'verification' ? err : undefined;
      } finally {
        stream?.destroy();
      }
    },
  };
}

export function formatPullSummary(s: PullToDestSummary): string {
  return `pulled ${s.image}@${s.manifestDigest} into ${s.dest}: ${s.layers} layers, ${s.compressedBytes} compressed bytes, `
    + `${s.expandedBytes} expanded bytes, ${s.files} files, ${s.dirs} dirs, ${s.symlinks} symlinks, ${s.hardlinks} hardlinks, `
    + `${s.whiteouts} whiteouts${s.devicesSkipped ? `, ${s.devicesSkipped} devices skipped` : ''}`
    + `${s.bootc ? `, bootc image${s.bootc.ostreeCommit ? ` (ostree commit ${s.bootc.ostreeCommit})` : ''}` : ''}`
    + `${Object.keys(s.filtered).length ? `, dropped outside /usr /etc /var: ${Object.entries(s.filtered).map(([k, n]) => `${k} ${n}`).join(', ')}` : ''}`
    + `, ${s.seconds.toFixed(2)} s\n`;
}
