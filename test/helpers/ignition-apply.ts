// Just enough of Ignition's files and systemd stages to provision a test machine's root from a
// config the way Ignition would on first boot: data: sources, gzip, sha512/sha256 verification of
// the decompressed contents (coreos/ignition#961), modes, units with [Install] WantedBy links.
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { decodeDataUrl } from '../ignition/validate.ts';

interface IgnFile {
  path: string;
  mode?: number;
  contents?: { source?: string; compression?: string; verification?: { hash?: string } };
}
interface IgnUnit { name: string; enabled?: boolean; contents?: string; dropins?: Array<{ name: string; contents: string }> }
export interface IgnitionDoc { ignition: { version: string }; storage?: { files?: IgnFile[] }; systemd?: { units?: IgnUnit[] } }

/** Writes the config's files and units under `root`; returns the paths it wrote. */
export function applyIgnition(doc: IgnitionDoc, root: string): string[] {
  if (doc.ignition.version !== '3.4.0') throw new Error(`unexpected Ignition version ${doc.ignition.version}`);
  const written: string[] = [];
  for (const f of doc.storage?.files ?? []) {
    let data = f.contents?.source ? decodeDataUrl(f.contents.source) : Buffer.alloc(0);
    if (f.contents?.compression === 'gzip') data = gunzipSync(data);
    else if (f.contents?.compression) throw new Error(`unsupported compression ${f.contents.compression}`);
    const hash = f.contents?.verification?.hash;
    if (hash) {
      const [algo, want] = hash.split('-') as [string, string];
      const got = createHash(algo).update(data).digest('hex');
      if (got !== want) throw new Error(`${f.path}: ${algo} mismatch`);
    }
    const target = join(root, f.path);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, data);
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
