// A tar writer for tests that can say anything: binary PAX values (NUL, invalid UTF-8), lying
// sizes, hostile names, GNU long names, hardlinks, devices, whiteouts, truncation and trailing
// garbage. tar-stream's pack() cannot write binary PAX, which is exactly what must be tested.
//
//   const tar = new TarBuilder().dir('etc').file('etc/x', 'hi', { xattrs: { 'user.a': buf } }).end();

export type TarType = 'file' | 'dir' | 'symlink' | 'hardlink' | 'char' | 'block' | 'fifo';
const TYPEFLAG: Record<TarType, string> = { file: '0', hardlink: '1', symlink: '2', char: '3', block: '4', dir: '5', fifo: '6' };

export interface HeaderSpec {
  name: string | Buffer;
  /** A TarType, or a raw typeflag character such as 'S' or 'x'. */
  type?: TarType | string;
  mode?: number;
  uid?: number;
  gid?: number;
  /** The size written in the header; defaults to the data length. */
  size?: number;
  mtime?: number;
  linkname?: string | Buffer;
  devmajor?: number;
  devminor?: number;
  /** Override the checksum (to corrupt it). */
  checksum?: number;
}

export interface EntrySpec extends HeaderSpec {
  data?: Buffer | string;
  /** Extra PAX records (raw values), written before the entry. */
  pax?: Array<[string, Buffer | string]>;
  xattrs?: Record<string, Buffer | string>;
  /** Long names via GNU 'L'/'K' headers instead of PAX. */
  gnuLong?: boolean;
}

function octal(buf: Buffer, value: number, off: number, len: number): void {
  if (value >= 8 ** (len - 1)) {
    // GNU base-256 for values that do not fit.
    buf[off] = 0x80;
    let v = value;
    for (let i = len - 1; i > 0; i--) {
      buf[off + i] = v % 256;
      v = Math.floor(v / 256);
    }
    return;
  }
  buf.write(`${value.toString(8).padStart(len - 1, '0')}\0`, off, len, 'latin1');
}

const bytes = (v: Buffer | string): Buffer => (typeof v === 'string' ? Buffer.from(v) : v);

/** One 512-byte ustar header. Names longer than the fields are cut (callers add PAX/GNU). */
export function tarHeader(h: HeaderSpec): Buffer {
  const buf = Buffer.alloc(512);
  const name = bytes(h.name);
  name.copy(buf, 0, 0, Math.min(100, name.length));
  const type = (h.type ?? 'file') as string;
  const flag = TYPEFLAG[type as TarType] ?? type;
  octal(buf, h.mode ?? (type === 'dir' ? 0o755 : 0o644), 100, 8);
  octal(buf, h.uid ?? 0, 108, 8);
  octal(buf, h.gid ?? 0, 116, 8);
  octal(buf, h.size ?? 0, 124, 12);
  octal(buf, h.mtime ?? 1_700_000_000, 136, 12);
  buf.write(flag, 156, 1, 'latin1');
  if (h.linkname !== undefined) bytes(h.linkname).copy(buf, 157, 0, Math.min(100, bytes(h.linkname).length));
  buf.write('ustar\0', 257, 'latin1');
  buf.write('00', 263, 'latin1');
  octal(buf, h.devmajor ?? 0, 329, 8);
  octal(buf, h.devminor ?? 0, 337, 8);
  buf.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of buf) sum += b;
  buf.write(`${(h.checksum ?? sum).toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
  return buf;
}

/** One PAX record "LEN key=value\n" with a binary-safe value. */
export function paxRecord(key: string, value: Buffer | string): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), bytes(value), Buffer.from('\n')]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

export const pad = (n: number): Buffer => Buffer.alloc((512 - (n % 512)) % 512);

export class TarBuilder {
  private readonly parts: Buffer[] = [];

  raw(buf: Buffer): this {
    this.parts.push(buf);
    return this;
  }

  /** A PAX extended header ('x', or 'g' for global) with these records. */
  paxHeader(records: Array<[string, Buffer | string]>, global = false, sizeOverride?: number): this {
    const body = Buffer.concat(records.map(([k, v]) => paxRecord(k, v)));
    this.parts.push(tarHeader({ name: 'PaxHeaders/x', type: global ? 'g' : 'x', size: sizeOverride ?? body.length }), body, pad(body.length));
    return this;
  }

  add(e: EntrySpec): this {
    const data = e.data === undefined ? Buffer.alloc(0) : bytes(e.data);
    const name = bytes(e.name);
    const link = e.linkname === undefined ? undefined : bytes(e.linkname);
    const pax: Array<[string, Buffer | string]> = [...(e.pax ?? [])];
    for (const [k, v] of Object.entries(e.xattrs ?? {})) pax.push([`SCHILY.xattr.${k}`, v]);
    if (e.gnuLong) {
      if (name.length > 100) this.gnuLong('L', name);
      if (link && link.length > 100) this.gnuLong('K', link);
    } else {
      if (name.length > 100) pax.unshift(['path', name]);
      if (link && link.length > 100) pax.unshift(['linkpath', link]);
    }
    if (pax.length) this.paxHeader(pax);
    this.parts.push(tarHeader({ ...e, size: e.size ?? data.length }), data, pad(data.length));
    return this;
  }

  private gnuLong(flag: 'L' | 'K', value: Buffer): void {
    const body = Buffer.concat([value, Buffer.from([0])]);
    this.parts.push(tarHeader({ name: '././@LongLink', type: flag, size: body.length }), body, pad(body.length));
  }

  file(name: string | Buffer, data: Buffer | string = '', more: Partial<EntrySpec> = {}): this {
    return this.add({ ...more, name, data, type: 'file' });
  }
  dir(name: string | Buffer, more: Partial<EntrySpec> = {}): this {
    return this.add({ ...more, name, type: 'dir' });
  }
  symlink(name: string | Buffer, target: string | Buffer, more: Partial<EntrySpec> = {}): this {
    return this.add({ mode: 0o777, ...more, name, linkname: target, type: 'symlink' });
  }
  hardlink(name: string | Buffer, target: string | Buffer, more: Partial<EntrySpec> = {}): this {
    return this.add({ ...more, name, linkname: target, type: 'hardlink' });
  }
  whiteout(path: string): this {
    const i = path.lastIndexOf('/');
    return this.file(`${path.slice(0, i + 1)}.wh.${path.slice(i + 1)}`);
  }
  opaque(dir: string): this {
    return this.file(`${dir.replace(/\/?$/, '/')}.wh..wh..opq`);
  }

  /** The archive with its two zero blocks (or `zeroBlocks` of them). */
  end(zeroBlocks = 2): Buffer {
    return Buffer.concat([...this.parts, Buffer.alloc(512 * zeroBlocks)]);
  }
}
