// Layer decompression chosen by media type and confirmed by the stream's magic bytes, so that a
// mislabelled layer fails with a clear error instead of a tar parse error deep in the unpack.
import { Transform, type TransformCallback } from 'node:stream';
import zlib from 'node:zlib';
import { PivotError } from '../errors.ts';

export type Compression = 'gzip' | 'zstd' | 'none';

const GZIP_MAGIC = Buffer.from([0x1f, 0x8b]);
const ZSTD_MAGIC = Buffer.from([0x28, 0xb5, 0x2f, 0xfd]);

/** OCI and Docker layer media types -> compression. Unknown types are refused (exit 5). */
export function compressionOf(mediaType: string): Compression {
  const mt = mediaType.toLowerCase();
  if (/^application\/vnd\.(oci\.image|docker\.image\.rootfs)\.(layer\.v1\.tar|diff\.tar)(\+gzip|\.gzip)$/.test(mt)) return 'gzip';
  if (/^application\/vnd\.(oci\.image\.layer\.v1\.tar|docker\.image\.rootfs\.diff\.tar)\+zstd$/.test(mt)) return 'zstd';
  if (/^application\/vnd\.(oci\.image\.layer\.v1\.tar|docker\.image\.rootfs\.diff\.tar)$/.test(mt)) return 'none';
  if (mt === 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip' || mt === 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip') return 'gzip';
  throw new PivotError('unpack', `unsupported layer media type ${JSON.stringify(mediaType)}`, {
    field: 'layers[].mediaType',
    fix: 'rebuild the image with gzip, zstd or uncompressed tar layers',
    permanent: true,
  });
}

/** What the first bytes say; 'none' also covers an empty stream. */
export function sniffCompression(head: Buffer): Compression | 'unknown' {
  if (head.length >= 2 && head.subarray(0, 2).equals(GZIP_MAGIC)) return 'gzip';
  if (head.length >= 4 && head.subarray(0, 4).equals(ZSTD_MAGIC)) return 'zstd';
  // A tar stream starts with a 512-byte header whose checksum field is octal digits; "ustar" sits
  // at offset 257 for every format we accept. A short head cannot be judged yet.
  if (head.length === 0) return 'none';
  if (head.length >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar') return 'none';
  if (head.length >= 512 && head.subarray(0, 512).every((b) => b === 0)) return 'none';
  return 'unknown';
}

/**
 * Passes bytes through unchanged after checking that the first ones match `expected`. Put it in
 * front of the inflater so that a mislabelled layer fails by name, not as a tar parse error.
 */
export function magicCheck(expected: Compression, label: string): Transform {
  const needed = expected === 'none' ? 512 : 4;
  let head: Buffer[] = [];
  let headLen = 0;
  let checked = false;
  const verdict = (buf: Buffer): Error | undefined => {
    const seen = sniffCompression(buf);
    if (seen === expected) return undefined;
    // A short uncompressed layer is a truncated tar, which the tar parser reports better.
    if (expected === 'none' && seen === 'unknown' && buf.length < 512) return undefined;
    if (expected !== 'none' && buf.length === 0) {
      return new PivotError('unpack', `layer ${label} is empty but labelled ${expected}`, {
        fix: 'the image is malformed: rebuild or re-push it',
        facts: { layer: label },
        permanent: true,
      });
    }
    return new PivotError('unpack', `layer ${label} is labelled ${expected} but its bytes are ${seen === 'unknown' ? 'neither gzip, zstd nor tar' : seen}`, {
      fix: 'the image is malformed: rebuild or re-push it so media types match the layer data',
      facts: { layer: label, expected, seen },
      permanent: true,
    });
  };
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      if (checked) return cb(null, chunk);
      head.push(chunk);
      headLen += chunk.length;
      if (headLen < needed) return cb();
      checked = true;
      const first = Buffer.concat(head);
      head = [];
      cb(verdict(first) ?? null, first);
    },
    flush(cb) {
      if (checked) return cb();
      const first = Buffer.concat(head);
      head = [];
      const err = verdict(first);
      if (err) return cb(err);
      if (first.length) this.push(first);
      cb();
    },
  });
}

/** The inflater for a layer, or undefined for an uncompressed one. */
export function inflater(compression: Compression): Transform | undefined {
  const opts = { chunkSize: 256 * 1024 };
  if (compression === 'gzip') return zlib.createGunzip(opts);
  if (compression === 'zstd') return zlib.createZstdDecompress(opts);
  return undefined;
}

/** The stages to put between a layer's bytes and the tar parser: magic check, then inflate. */
export function decompressionStages(mediaType: string, label: string): Transform[] {
  const compression = compressionOf(mediaType);
  const inflate = inflater(compression);
  return inflate ? [magicCheck(compression, label), inflate] : [magicCheck(compression, label)];
}

/** Turns a zlib error from a pipeline into a PivotError naming the layer. */
export function corruptLayerError(err: unknown, label: string): unknown {
  const e = err as NodeJS.ErrnoException;
  // zlib reports Z_* codes (gzip), Node's zstd binding ZSTD_error_* codes.
  if (err instanceof PivotError || typeof e?.code !== 'string' || !/^(Z_|ZSTD_)/.test(e.code)) return err;
  return new PivotError('unpack', `layer ${label}: compressed data is corrupt or truncated (${e.message})`, {
    fix: 'pull again; if it repeats, the layer in the registry is damaged',
    facts: { layer: label, zlibCode: e.code },
    cause: err,
  });
}
