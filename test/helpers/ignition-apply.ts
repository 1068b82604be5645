// Just enough of Ignition's files and systemd stages to provision a test machine's root from a
// config the way Ignition would on first boot: data: and http(s): sources, gzip, sha512/sha256
// verification of the decompressed contents (spec 3.4.0, storage.files[].contents.verification:
// "If compression is specified, the hash describes the decompressed contents"; coreos/ignition#961),
// modes, units with [Install] WantedBy links. Like Ignition, a remote file is fetched into a
// temporary file and only renamed into place once its hash matched.
import { createHash } from 'node:crypto';
import { chmodSync, createWriteStream, mkdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { createGunzip } from 'node:zlib';
import { decodeDataUrl } from '../ignition/validate.ts';

interface IgnFile {
  path: string;
  mode?: number;
  contents?: { source?: string; compression?: string; verification?: { hash?: string } };
}
interface IgnUnit { name: string; enabled?: boolean; contents?: string; dropins?: Array<{ name: string; contents: string }> }
export interface IgnitionDoc { ignition: { version: string }; storage?: { files?: IgnFile[] }; systemd?: { units?: IgnUnit[] } }

async function openSource(source: string): Promise<Readable> {
  if (source.startsWith('data:')) return Readable.from([decodeDataUrl(source)]);
  if (!/^https?:/.test(source)) throw new Error(`unsupported source scheme in ${source}`);
  const res = await fetch(source);
  if (!res.ok || !res.body) throw new Error(`GET ${source}: HTTP ${res.status}`);
  return Readable.fromWeb(res.body as WebReadableStream<Uint8Array>);
}

/** Fetches, decompresses and verifies one file's contents into `target`. */
async function writeContents(f: IgnFile, target: string): Promise<void> {
  const c = f.contents ?? {};
  if (c.compression && c.compression !== 'gzip') throw new Error(`unsupported compression ${c.compression}`);
  const [algo, want] = (c.verification?.hash ?? '').split('-') as [string, string | undefined];
  const hash = want ? createHash(algo) : undefined;
  const tap = new Transform({ transform(chunk: Buffer, _e, done) { hash?.update(chunk); done(null, chunk); } });
  const tmp = `${target}.ignition-tmp`;
  try {
    const body = c.source ? await openSource(c.source) : Readable.from([]);
    if (c.compression === 'gzip') await pipeline(body, createGunzip(), tap, createWriteStream(tmp));
    else await pipeline(body, tap, createWriteStream(tmp));
    if (hash && hash.digest('hex') !== want) throw new Error(`${f.path}: ${algo} mismatch (of the ${c.compression ? 'decompressed ' : ''}contents)`);
    renameSync(tmp, target);
  } finally {
    rmSync(tmp, { force: true });
  }
}

/** Writes the config's files and units under `root`; returns the paths it wrote. */
export async function applyIgnition(doc: IgnitionDoc, root: string): Promise<string[]> {
  if (doc.ignition.version !== '3.4.0') throw new Error(`unexpected Ignition version ${doc.ignition.version}`);
  const written: string[] = [];
  for (const f of doc.storage?.files ?? []) {
    const target = join(root, f.path);
    mkdirSync(dirname(target), { recursive: true });
    await writeContents(f, target);
    chmodSync(target, f.mode ?? 0o644);
    written.push(f.path);
  }
  for (const u of doc.systemd?.units ?? []) {
    const dir = join(root, 'etc/systemd/system');
    mkdirSync(dir, { recursive: true });
    if (u.contents !== undefined) writeFileSync(join(dir, u.name), u.contents);
    for (const d of u.dropins ?? []) {
      mkdirSync(join(dir, `${u.name}.d`), { recursive: true });
      writeFileSync(join(dir, `${u.name}.d`, d.name), d.contents);
    }
    if (u.enabled) {
      for (const wantedBy of /^WantedBy=(.+)$/m.exec(u.contents ?? '')?.[1]?.split(/\s+/) ?? []) {
        mkdirSync(join(dir, `${wantedBy}.wants`), { recursive: true });
        symlinkSync(`/etc/systemd/system/${u.name}`, join(dir, `${wantedBy}.wants`, u.name));
      }
    }
    written.push(`/etc/systemd/system/${u.name}`);
  }
  return written;
}
