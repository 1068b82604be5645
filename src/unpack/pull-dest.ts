// pull IMAGE --dest DIR: the registry client's verified blob streams, straight into the unpacker.
// The tree is built in DIR.partial and renamed to DIR only once every layer is in and verified,
// so a failed or killed pull never leaves a plausible-looking DIR behind.
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { Readable } from 'node:stream';
import { PivotError } from '../errors.ts';
import { log } from '../log.ts';
import { openImage, type RegistryOptions } from '../registry/index.ts';
import { unpackLayers, type LayerSource, type UnpackOptions, type UnpackSummary } from './layers.ts';

export interface PullToDestSummary extends UnpackSummary {
  image: string;
  manifestDigest: string;
  source: string;
  dest: string;
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
  try {
    const layers: LayerSource[] = image.layers.map((l) => {
      const v = keepVerifiable(() => image.openBlob(l));
      inFlight.push(v);
      return { ...l, open: v.open };
    });
    log().info({ image: image.reference.toString(), manifestDigest: image.manifestDigest, layers: layers.length, dest: dir }, 'unpacking image');
    const summary = await unpackLayers(partial, layers, unpack);
    renameSync(partial, dir);
    return {
      ...summary,
      image: image.reference.toString(),
      manifestDigest: image.manifestDigest,
      source: image.source,
      dest: dir,
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
    await image.close();
  }
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
    + `${s.whiteouts} whiteouts${s.devicesSkipped ? `, ${s.devicesSkipped} devices skipped` : ''}, ${s.seconds.toFixed(2)} s\n`;
}
