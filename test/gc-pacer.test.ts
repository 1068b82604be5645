import { describe, expect, it } from 'vitest';
import { GC_EVERY_BYTES, bytesMoved, pacedCollections } from '../src/gc-pacer.ts';
import { waitFor } from './helpers/wait.ts';

describe('GC pacing by bytes streamed', () => {
  it('runs a full collection once GC_EVERY_BYTES have moved, and not before', () => {
    // Align the process-wide count: this crossing collects, and the count starts again from 0.
    bytesMoved(GC_EVERY_BYTES);
    const start = pacedCollections().collections;
    expect(start).toBeGreaterThanOrEqual(1);
    for (let i = 0; i < 1023; i++) bytesMoved(GC_EVERY_BYTES / 1024);
    expect(pacedCollections().collections).toBe(start);
    bytesMoved(GC_EVERY_BYTES / 1024);
    expect(pacedCollections().collections).toBe(start + 1);
    // One large chunk counts once, however far past the threshold it goes.
    bytesMoved(3 * GC_EVERY_BYTES);
    expect(pacedCollections().collections).toBe(start + 2);
    expect(pacedCollections().seconds).toBeGreaterThan(0);
  });

  it('frees an unreachable buffer whose object was promoted to the old generation', async () => {
    let freed = false;
    const registry = new FinalizationRegistry(() => { freed = true; });
    const holder: { buf?: Buffer } = { buf: Buffer.alloc(256 * 1024) };
    registry.register(holder.buf!, 'buffer');
    // Survives two collections, as a buffer in flight in the pipeline does: now it is old.
    bytesMoved(GC_EVERY_BYTES);
    bytesMoved(GC_EVERY_BYTES);
    expect(freed).toBe(false);
    delete holder.buf;
    bytesMoved(GC_EVERY_BYTES);
    // Finalizers run as a task after the collection that found the object dead.
    await waitFor(() => freed || undefined, 'the finalizer of the dropped buffer', { timeoutMs: 5_000, intervalMs: 5 });
  });
});
