// Paces V8's full collections by the bytes the process streams. A pull's memory is mostly
// 64-256 KiB buffers (socket reads, blob reads, decompressed output) that die within
// milliseconds. One still in flight at a scavenge is promoted, though, and promoted buffers are
// freed only by a full collection, which V8 starts once about 64 MiB of them have piled up. How
// much piled up depended on timing: peak RSS varied by tens of MiB from run to run, and delta
// staging, which allocates fewer small objects, piled up more than full staging. A full collection
// every 16 MiB moved bounds the pile instead: 64 collections per GiB moved. Each took 15-25 ms
// on the 2-core bench machine: 6-30% more pull CPU on the big bench images in one side-by-side
// run, within the noise in another, against 30-70 MiB less peak RSS in both (docs/benchmarks.md).
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

export const GC_EVERY_BYTES = 16 * 1024 * 1024;

type Collect = () => void;
let collect: Collect | null | undefined;
let since = 0;
const paced = { collections: 0, seconds: 0 };

/** V8's gc(), exposed at run time; null where that is refused (then pacing does nothing). */
function collector(): Collect | null {
  if (collect === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      // Only a context created after the flag is set has gc(); the main one predates it.
      const fn: unknown = runInNewContext('gc');
      collect = typeof fn === 'function' ? (fn as Collect) : null;
    } catch {
      collect = null;
    }
  }
  return collect;
}

/**
 * Counts n bytes streamed (downloaded, or decompressed) and collects once GC_EVERY_BYTES have
 * moved since the last collection. One count for the whole process: a download and an unpack
 * running side by side make garbage for the same collector.
 */
export function bytesMoved(n: number): void {
  since += n;
  if (since < GC_EVERY_BYTES) return;
  since = 0;
  const fn = collector();
  if (!fn) return;
  const t = performance.now();
  fn();
  paced.seconds += (performance.now() - t) / 1000;
  paced.collections++;
}

/** The paced collections so far and the time they took (the pull facts report both). */
export function pacedCollections(): { collections: number; seconds: number } {
  return { collections: paced.collections, seconds: Math.round(paced.seconds * 1000) / 1000 };
}
