import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, expect, it } from 'vitest';
import { createTarExtract, parsePaxRecords, toTarEntry, type TarEntry } from '../../src/unpack/tar.ts';
import { TarBuilder, paxRecord } from '../helpers/tar-builder.ts';

async function entries(tar: Buffer): Promise<TarEntry[]> {
  const ex = createTarExtract('t');
  const out: TarEntry[] = [];
  await Promise.all([
    pipeline(Readable.from([tar]), ex),
    (async () => {
      for await (const body of ex) {
        out.push(toTarEntry(body.header, 't'));
        for await (const _ of body) { /* drain */ }
      }
    })(),
  ]);
  return out;
}

describe('parsePaxRecords', () => {
  it('keeps every byte of a value: NUL, newline, =, invalid UTF-8', () => {
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
    const buf = Buffer.concat([paxRecord('SCHILY.xattr.user.all', all), paxRecord('path', 'a=b'), paxRecord('k', '')]);
    const r = parsePaxRecords(buf);
    expect(r.get('SCHILY.xattr.user.all')?.equals(all)).toBe(true);
    expect(r.get('path')?.toString()).toBe('a=b');
    expect(r.get('k')?.length).toBe(0);
  });
  it.each([
    ['length overruns', Buffer.from('99 k=v\n')],
    ['no newline', Buffer.from('6 k=vX')],
    ['no key', Buffer.from('5 =v\n')],
    ['bad length', Buffer.from('x6 k=v\n')],
    ['zero length', Buffer.from('0 k=v\n')],
  ])('refuses %s', (_what, buf) => {
    expect(() => parsePaxRecords(buf)).toThrow(/malformed PAX header/);
  });
});

describe('createTarExtract', () => {
  it('hands binary xattrs through tar-stream byte for byte (the decodePax hook is live)', async () => {
    const cap = Buffer.from('0100000200200000000000000000000000000000', 'hex');
    const bad = Buffer.from([0xc3, 0x28, 0x00, 0xff, 0x0a]);
    const tar = new TarBuilder().file('a', 'x', { xattrs: { 'security.capability': cap, 'user.bad': bad } }).file('b', 'y').end();
    const [a, b] = await entries(tar);
    expect(a?.xattrs.get('security.capability')?.equals(cap)).toBe(true);
    expect(a?.xattrs.get('user.bad')?.equals(bad)).toBe(true);
    expect(b?.xattrs.size).toBe(0);
  });
  it('reads PAX path, linkpath, uid, gid and fractional mtime; GNU long names; devices', async () => {
    const long = `${'d'.repeat(150)}/ünï ✓`;
    const tar = new TarBuilder()
      .add({ name: 'x', data: '', pax: [['path', long], ['uid', '4000000'], ['gid', '5000000'], ['mtime', '1700000000.5']] })
      .hardlink('h', long, { gnuLong: false })
      .file(`${'g'.repeat(120)}`, '', { gnuLong: true })
      .add({ name: 'dev', type: 'block', devmajor: 8, devminor: 1 })
      .end();
    const [x, h, g, dev] = await entries(tar);
    expect([x?.name, x?.uid, x?.gid, x?.mtime]).toEqual([long, 4000000, 5000000, 1700000000.5]);
    expect([h?.type, h?.linkname]).toEqual(['hardlink', long]);
    expect(g?.name).toBe('g'.repeat(120));
    expect([dev?.type, dev?.devmajor, dev?.devminor]).toEqual(['block', 8, 1]);
  });
});
