// The one GVariant type the unpacker reads: ostree's xattr list `a(ayay)`, as stored in the
// `.file-xattrs` / `.file-xattrs-link` objects of an ostree-native image. Serialisation rules are
// GVariant's (framing offsets little-endian, their width chosen by the container's size), read
// strictly: GLib answers a malformed variant with an empty default, which would silently drop
// file capabilities, so every offset here is checked and a bad one is an error.

/** Width of a framing offset in a container of `size` bytes (GVariant's rule). */
export function offsetWidth(size: number): number {
  if (size === 0) return 0;
  if (size <= 0xff) return 1;
  if (size <= 0xffff) return 2;
  if (size <= 0xffffffff) return 4;
  return 8;
}

function readOffset(buf: Buffer, at: number, width: number): number {
  if (width === 1) return buf.readUInt8(at);
  if (width === 2) return buf.readUInt16LE(at);
  if (width === 4) return buf.readUInt32LE(at);
  return Number(buf.readBigUInt64LE(at));
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

export class GVariantError extends Error {
  readonly why: string;
  constructor(why: string) {
    super(`malformed a(ayay) GVariant: ${why}`);
    this.why = why;
  }
}

/** The framed children of an array of variable-size elements, as [start, end) pairs. */
function arrayElements(buf: Buffer): Array<[number, number]> {
  if (buf.length === 0) return [];
  const w = offsetWidth(buf.length);
  if (buf.length < w) throw new GVariantError('shorter than one framing offset');
  const tableStart = readOffset(buf, buf.length - w, w);
  if (tableStart > buf.length - w) throw new GVariantError(`offset table starts at ${tableStart}, past the end (${buf.length})`);
  const tableBytes = buf.length - tableStart;
  if (tableBytes % w !== 0) throw new GVariantError(`offset table of ${tableBytes} bytes is not a multiple of ${w}`);
  const out: Array<[number, number]> = [];
  let start = 0;
  for (let at = tableStart; at < buf.length; at += w) {
    const end = readOffset(buf, at, w);
    if (end < start || end > tableStart) throw new GVariantError(`element end ${end} is outside ${start}..${tableStart}`);
    out.push([start, end]);
    start = end;
  }
  return out;
}

/**
 * Parses ostree's xattr list. Names are NUL-terminated in the variant; the NUL is dropped.
 * Throws GVariantError on any framing error, an unterminated or empty name, or a repeated name.
 */
export function parseXattrList(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const [start, end] of arrayElements(buf)) {
    const tuple = buf.subarray(start, end);
    const w = offsetWidth(tuple.length);
    if (tuple.length === 0 || tuple.length < w) throw new GVariantError(`element at ${start} is too short for a (ayay) tuple`);
    const keyEnd = readOffset(tuple, tuple.length - w, w);
    if (keyEnd > tuple.length - w) throw new GVariantError(`element at ${start}: name end ${keyEnd} is past the value`);
    const key = tuple.subarray(0, keyEnd);
    if (key.length < 2 || key[key.length - 1] !== 0) throw new GVariantError(`element at ${start}: name is empty or not NUL-terminated`);
    if (key.subarray(0, -1).includes(0)) throw new GVariantError(`element at ${start}: name contains a NUL byte`);
    let name: string;
    try {
      name = utf8.decode(key.subarray(0, -1));
    } catch {
      throw new GVariantError(`element at ${start}: name is not UTF-8`);
    }
    if (out.has(name)) throw new GVariantError(`name ${JSON.stringify(name)} appears twice`);
    out.set(name, Buffer.from(tuple.subarray(keyEnd, tuple.length - w)));
  }
  return out;
}
