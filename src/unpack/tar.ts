// tar-stream@3 with binary-safe PAX. tar-stream decodes every PAX value as UTF-8, which corrupts
// binary xattrs such as security.capability. We parse the raw PAX records ourselves (keys as
// UTF-8, values as raw bytes) by replacing the one private method that decodes long headers on
// our own Extract instance; tar-stream is pinned exactly, and test/unpack/tar.test.ts fails if
// this hook ever stops being called. Names are read as latin1 (byte-exact) and then decoded as
// strict UTF-8, so a non-UTF-8 name is a clear error instead of silently becoming U+FFFD.
import { extract as tarExtract, type Extract, type Header as Headers } from 'tar-stream';

export type { Headers };
import { PivotError } from '../errors.ts';

export type TarEntryType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'fifo' | 'char' | 'block';

/** One tar entry, normalised: what entry.ts needs and nothing tar-format specific. */
export interface TarEntry {
  /** The name as in the archive (after PAX / GNU long names), UTF-8. */
  name: string;
  type: TarEntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  /** Seconds since the epoch, fractional when PAX gave nanoseconds. */
  mtime: number;
  linkname: string;
  devmajor: number;
  devminor: number;
  /** SCHILY.xattr.* as raw bytes, in archive order. */
  xattrs: Map<string, Buffer>;
}

/** Longer PAX headers than this are refused (tar-stream's own cap is 4 MiB). */
export const MAX_PAX_HEADER = 1024 * 1024;
/**
 * Global PAX headers ('g') merge into every later entry, so what they may add up to is bounded:
 * real archives carry one or two records (git archive's comment=COMMIT). Over these: exit 5.
 */
export const MAX_GLOBAL_PAX_KEYS = 256;
export const MAX_GLOBAL_PAX_BYTES = 64 * 1024;
const PAX_RAW = Symbol('paxRaw');
const XATTR_PREFIX = 'SCHILY.xattr.';
const utf8 = new TextDecoder('utf-8', { fatal: true });

function malformed(label: string, why: string): PivotError {
  return new PivotError('unpack', `layer ${label}: malformed PAX header (${why})`, {
    fix: 'the layer is malformed or hostile: rebuild the image',
    facts: { layer: label },
    permanent: true,
  });
}

/**
 * Parses PAX extended header records "LEN KEY=VALUE\n" (POSIX.1-2001). LEN counts the whole
 * record, so values may hold any byte, NUL and newline included. Every length is checked.
 */
export function parsePaxRecords(buf: Buffer, label = '?'): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < buf.length) {
    // Some writers pad the body with NULs; nothing meaningful can follow them.
    if (buf[off] === 0) break;
    const space = buf.indexOf(0x20, off);
    if (space < 0 || space - off > 20) throw malformed(label, `no length at offset ${off}`);
    const lenText = buf.subarray(off, space).toString('latin1');
    if (!/^[1-9][0-9]*$/.test(lenText)) throw malformed(label, `bad record length ${JSON.stringify(lenText)}`);
    const len = Number(lenText);
    const end = off + len;
    if (end > buf.length || end <= space + 1) throw malformed(label, `record length ${len} overruns the header`);
    if (buf[end - 1] !== 0x0a) throw malformed(label, `record at offset ${off} does not end in a newline`);
    const record = buf.subarray(space + 1, end - 1);
    const eq = record.indexOf(0x3d);
    if (eq <= 0) throw malformed(label, `record at offset ${off} has no key`);
    let key: string;
    try {
      key = utf8.decode(record.subarray(0, eq));
    } catch {
      throw malformed(label, `record key at offset ${off} is not UTF-8`);
    }
    out.set(key, Buffer.from(record.subarray(eq + 1)));
    off = end;
  }
  return out;
}

/** Strict UTF-8 for names; NUL is refused here so nothing downstream ever sees one. */
function nameFromBytes(bytes: Buffer, label: string, what: string): string {
  if (bytes.includes(0)) {
    throw new PivotError('path-safety', `layer ${label}: ${what} contains a NUL byte`, {
      fix: 'the layer is malformed or hostile: rebuild the image',
      facts: { layer: label },
    });
  }
  try {
    return utf8.decode(bytes);
  } catch {
    throw new PivotError('unpack', `layer ${label}: ${what} ${JSON.stringify(bytes.toString('latin1'))} is not valid UTF-8`, {
      fix: 'rebuild the image with UTF-8 file names (non-UTF-8 names are not supported)',
      facts: { layer: label },
      permanent: true,
    });
  }
}

function decimal(records: Map<string, Buffer>, key: string, label: string): number | undefined {
  const v = records.get(key);
  if (v === undefined) return undefined;
  const s = v.toString('latin1');
  if (!/^[0-9]{1,15}$/.test(s)) throw malformed(label, `${key}=${JSON.stringify(s)} is not a number`);
  return Number(s);
}

function paxTime(records: Map<string, Buffer>, key: string, label: string): number | undefined {
  const v = records.get(key);
  if (v === undefined) return undefined;
  const s = v.toString('latin1');
  if (!/^-?[0-9]{1,12}(\.[0-9]{1,9})?$/.test(s)) throw malformed(label, `${key}=${JSON.stringify(s)} is not a time`);
  return Number(s);
}

function checkGlobal(global: Map<string, Buffer>, label: string): void {
  let bytes = 0;
  for (const [k, v] of global) bytes += Buffer.byteLength(k) + v.length;
  if (global.size <= MAX_GLOBAL_PAX_KEYS && bytes <= MAX_GLOBAL_PAX_BYTES) return;
  throw new PivotError('limit', `layer ${label}: global PAX headers add up to ${global.size} keys and ${bytes} bytes, over the limit of ${MAX_GLOBAL_PAX_KEYS} keys and ${MAX_GLOBAL_PAX_BYTES} bytes`, {
    fix: 'the layer is malformed or hostile: rebuild the image',
    facts: { layer: label, keys: global.size, bytes },
  });
}

interface PatchableExtract {
  _header: { type: string | null; size: number };
  _pax: Record<string | symbol, unknown> | null;
  _decodeLongHeader(buf: Buffer): void;
}

/**
 * A tar-stream Extract whose PAX records keep their raw bytes. Use it as the last stage of a
 * pipeline and iterate it; turn each header into a TarEntry with toTarEntry().
 */
export function createTarExtract(label: string): Extract {
  // filenameEncoding exists in tar-stream 3 but not in its type definitions.
  const ex = tarExtract({ filenameEncoding: 'latin1' } as Parameters<typeof tarExtract>[0]);
  const target = ex as unknown as PatchableExtract;
  const original = target._decodeLongHeader;
  if (typeof original !== 'function') {
    throw new PivotError('internal', 'tar-stream no longer has _decodeLongHeader; binary PAX would be lost', {
      fix: 'pin tar-stream to 3.2.2 or port src/unpack/tar.ts to the new version',
    });
  }
  let global = new Map<string, Buffer>();
  target._decodeLongHeader = function patched(this: PatchableExtract, buf: Buffer): void {
    const type = this._header.type;
    if (type !== 'pax-header' && type !== 'pax-global-header') {
      original.call(this, buf);
      return;
    }
    if (buf.length > MAX_PAX_HEADER) throw malformed(label, `${buf.length} bytes is over the ${MAX_PAX_HEADER}-byte limit`);
    const records = parsePaxRecords(buf, label);
    if (type === 'pax-global-header') {
      global = new Map([...global, ...records]);
      checkGlobal(global, label);
      return;
    }
    const merged = new Map([...global, ...records]);
    // tar-stream applies path, linkpath and size itself; give it byte-exact latin1 strings,
    // matching how it reads the ustar name fields.
    const view: Record<string | symbol, unknown> = { [PAX_RAW]: merged };
    const path = merged.get('path');
    const linkpath = merged.get('linkpath');
    if (path) view.path = path.toString('latin1');
    if (linkpath) view.linkpath = linkpath.toString('latin1');
    const size = decimal(merged, 'size', label);
    if (size !== undefined) view.size = String(size);
    this._pax = view;
  };
  return ex;
}

const typeMap: Record<string, TarEntryType> = {
  file: 'file',
  'contiguous-file': 'file',
  directory: 'dir',
  symlink: 'symlink',
  link: 'hardlink',
  fifo: 'fifo',
  'character-device': 'char',
  'block-device': 'block',
};

/** Normalises a tar-stream header read by createTarExtract(). */
export function toTarEntry(header: Headers, label: string): TarEntry {
  const raw = (header.pax as Record<string | symbol, unknown> | null | undefined)?.[PAX_RAW] as Map<string, Buffer> | undefined;
  const records = raw ?? new Map<string, Buffer>();
  const name = nameFromBytes(Buffer.from(header.name, 'latin1'), label, 'entry name');
  const type = header.type ? typeMap[header.type] : undefined;
  if (!type) {
    throw new PivotError('unpack', `layer ${label}: entry ${JSON.stringify(name)} has unsupported tar type ${JSON.stringify(header.type)}`, {
      fix: 'rebuild the image without sparse files, sockets or vendor tar extensions',
      facts: { layer: label },
      permanent: true,
    });
  }
  const xattrs = new Map<string, Buffer>();
  for (const [key, value] of records) {
    if (key.startsWith(XATTR_PREFIX) && key.length > XATTR_PREFIX.length) xattrs.set(key.slice(XATTR_PREFIX.length), value);
  }
  const linkname = header.linkname ? nameFromBytes(Buffer.from(header.linkname, 'latin1'), label, `link target of ${JSON.stringify(name)}`) : '';
  return {
    name,
    type,
    mode: (header.mode ?? 0o644) & 0o7777,
    uid: decimal(records, 'uid', label) ?? header.uid ?? 0,
    gid: decimal(records, 'gid', label) ?? header.gid ?? 0,
    size: header.size ?? 0,
    mtime: paxTime(records, 'mtime', label) ?? (header.mtime ? header.mtime.getTime() / 1000 : 0),
    linkname,
    devmajor: header.devmajor ?? 0,
    devminor: header.devminor ?? 0,
    xattrs,
  };
}
