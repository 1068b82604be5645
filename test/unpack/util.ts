// Shared bits for the unpack tests: layers from buffers, temp roots with a canary next door.
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { configSchema, type Config } from '../../src/config.ts';
import type { LayerSource, UnpackOptions } from '../../src/unpack/index.ts';

export const TAR = 'application/vnd.oci.image.layer.v1.tar';
export const GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd';

export function compress(tar: Buffer, mediaType: string): Buffer {
  if (mediaType === GZIP) return zlib.gzipSync(tar);
  if (mediaType === ZSTD) return zlib.zstdCompressSync(tar);
  return tar;
}

/** A layer served from memory in small chunks, so the pipeline really streams. */
export function bufferLayer(data: Buffer, mediaType = TAR): LayerSource {
  return {
    digest: `sha256:${createHash('sha256').update(data).digest('hex')}`,
    mediaType,
    size: data.length,
    open: async () => Readable.from((function* () {
      for (let i = 0; i < data.length; i += 16 * 1024) yield data.subarray(i, i + 16 * 1024);
    })()),
  };
}

export const tarLayer = (tar: Buffer, mediaType = TAR): LayerSource => bufferLayer(compress(tar, mediaType), mediaType);

export function defaultLimits(over: Partial<Config['limits']> = {}): Config['limits'] {
  return { ...configSchema.parse({ image: 'x' }).limits, ...over };
}

export function options(over: Partial<UnpackOptions> = {}): UnpackOptions {
  return { limits: defaultLimits(), allowDevices: false, keepSysroot: true, ...over };
}

export interface Sandbox {
  base: string;
  dest: string;
  canary: string;
  /** Throws unless the canary directory is exactly as created. */
  canaryIntact(): boolean;
  cleanup(): void;
}

/** base/{dest,canary}: canary holds a file and a dir that a tar-slip would hit first. */
export function sandbox(): Sandbox {
  const base = mkdtempSync(join(tmpdir(), 'nip-unpack-'));
  const dest = join(base, 'dest');
  const canary = join(base, 'canary');
  mkdirSync(dest);
  mkdirSync(join(canary, 'etc'), { recursive: true });
  writeFileSync(join(canary, 'x'), 'canary');
  writeFileSync(join(canary, 'etc', 'x'), 'canary');
  const snapshot = (): string => readdirSync(canary, { recursive: true }).map(String).sort()
    .map((p) => { const st = statSync(join(canary, p)); return `${p}:${st.mode}:${st.size}:${st.mtimeMs}`; }).join('\n');
  const before = snapshot();
  // Anything a test makes in base must be named dest*; anything else appearing is an escape.
  const others = (): string => readdirSync(base).filter((n) => !n.startsWith('dest')).sort().join(',');
  const baseBefore = others();
  return {
    base, dest, canary,
    canaryIntact: () => snapshot() === before && others() === baseBefore,
    cleanup: () => rmSync(base, { recursive: true, force: true }),
  };
}
