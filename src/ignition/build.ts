// Builds the Ignition spec 3.4.0 config that installs node-image-pivot on a node: the binary, its
// config, the generator and the units. The document is built purely; only an embedded binary is
// streamed into it (gzip, then base64), so a 100 MB binary never sits in memory.
import { createReadStream } from 'node:fs';
import { createHash } from 'node:crypto';
import { Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { constants as zlibConstants, createGzip } from 'node:zlib';
import { DEFAULT_CONFIG_PATH } from '../config.ts';
import { PivotError } from '../errors.ts';
import { GENERATOR_NAME, UNIT_NAMES, type UnitAssets } from './assets.ts';

export const IGNITION_VERSION = '3.4.0';
export const BINARY_PATH = '/usr/local/bin/node-image-pivot';
export const GENERATOR_PATH = `/etc/systemd/system-generators/${GENERATOR_NAME}`;

const MODE_EXEC = 0o755;
const MODE_CONFIG = 0o644;

export type Compression = 'gzip' | 'none';

export type BinarySource =
  /** sha512 is of the uncompressed binary, whatever `compression` says (see buildIgnition). */
  | { kind: 'remote'; url: string; sha512: string; compression: Compression }
  | { kind: 'embed'; path: string };

export interface IgnitionInput {
  /** The config file's text, already validated with parseConfig. */
  configText: string;
  binary: BinarySource;
  assets: UnitAssets;
}

export interface IgnitionFile {
  path: string;
  overwrite: boolean;
  mode: number;
  contents: { source: string; compression?: 'gzip'; verification?: { hash: string } };
}
export interface IgnitionUnit {
  name: string;
  enabled?: boolean;
  contents: string;
}
export interface IgnitionConfig {
  ignition: { version: string };
  storage: { files: IgnitionFile[] };
  systemd: { units: IgnitionUnit[] };
}

/** Ignition fetches from these; file:// and friends would not exist on the node. */
const FETCH_SCHEMES = new Set(['http:', 'https:', 'tftp:', 's3:', 'gs:', 'arn:']);

export function checkBinaryUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new PivotError('usage', `--binary-url ${JSON.stringify(url)} is not a URL`, { field: '--binary-url', fix: 'pass a full URL such as https://mirror.example/node-image-pivot' });
  }
  if (!FETCH_SCHEMES.has(parsed.protocol)) {
    throw new PivotError('usage', `--binary-url scheme ${parsed.protocol} cannot be fetched by Ignition`, { field: '--binary-url', fix: 'use an http, https, tftp, s3, gs or arn URL' });
  }
  return url;
}

export function checkCompression(value: string, url: string): Compression {
  if (value !== 'gzip' && value !== 'none') {
    throw new PivotError('usage', `--compression ${JSON.stringify(value)} is not gzip or none`, { field: '--compression', fix: 'pass --compression gzip (for node-image-pivot.gz) or --compression none (for the plain binary)' });
  }
  // A .gz written to /usr/local/bin as is would be a binary that cannot run: a stuck first boot.
  if (value === 'none' && /\.gz$/i.test(new URL(url).pathname)) {
    throw new PivotError('usage', `--binary-url ${url} names a .gz file but --compression is none`, { field: '--compression', fix: 'leave out --compression (gzip is the default), or point --binary-url at the uncompressed binary' });
  }
  return value;
}

export function checkSha512(hex: string): string {
  if (!/^[0-9a-fA-F]{128}$/.test(hex)) {
    throw new PivotError('usage', '--binary-sha512 must be 128 hex digits', { field: '--binary-sha512', fix: 'pass the output of sha512sum for the binary at --binary-url' });
  }
  return hex.toLowerCase();
}

/** RFC 2397 with percent-encoding: text stays readable in the config, which reviewers read. */
export function textDataUrl(text: string): string {
  return `data:,${encodeURIComponent(text)}`;
}

const EMBED_SOURCE = 'data:;base64,\u0000EMBEDDED-BINARY\u0000';
const EMBED_HASH = 'sha512-\u0000EMBEDDED-HASH\u0000';

/** PURE: the whole document. An embedded binary's source and hash are placeholders here. */
export function buildIgnition(input: IgnitionInput): IgnitionConfig {
  // Ignition spec 3.4.0, storage.files[].contents.verification.hash: "If compression is
  // specified, the hash describes the decompressed contents"
  // (https://coreos.github.io/ignition/configuration-v3_4/). So with gzip the hash is still the
  // binary's own sha512 (the `node-image-pivot` line of dist/SHA512SUMS), never the .gz's.
  const binary: IgnitionFile = input.binary.kind === 'remote'
    ? {
        path: BINARY_PATH, overwrite: true, mode: MODE_EXEC,
        contents: {
          ...(input.binary.compression === 'gzip' ? { compression: 'gzip' as const } : {}),
          source: checkBinaryUrl(input.binary.url),
          verification: { hash: `sha512-${checkSha512(input.binary.sha512)}` },
        },
      }
    : {
        path: BINARY_PATH, overwrite: true, mode: MODE_EXEC,
        // As above: the hash is of the decompressed bytes (Ignition checks it after gunzip).
        contents: { compression: 'gzip', source: EMBED_SOURCE, verification: { hash: EMBED_HASH } },
      };
  return {
    ignition: { version: IGNITION_VERSION },
    storage: {
      files: [
        binary,
        { path: DEFAULT_CONFIG_PATH, overwrite: true, mode: MODE_CONFIG, contents: { source: textDataUrl(input.configText) } },
        { path: GENERATOR_PATH, overwrite: true, mode: MODE_EXEC, contents: { source: textDataUrl(input.assets.generator) } },
      ],
    },
    systemd: {
      // Nothing is enabled: the generator sends the boot to node-image-pivot.target, which pulls
      // in the service; node-image-overlay.service is for installers that start it themselves.
      units: UNIT_NAMES.map((name) => {
        const contents = input.assets.units[name];
        if (contents === undefined) throw new PivotError('internal', `unit ${name} is missing from the embedded units`, { fix: 'rebuild node-image-pivot' });
        return { name, contents };
      }),
    },
  };
}

export function serialize(doc: IgnitionConfig): string {
  return `${JSON.stringify(doc, null, 2)}\n`;
}

/** Base64 across chunk boundaries: only whole 3-byte groups go out until the end. */
class Base64Encode extends Transform {
  private rest = Buffer.alloc(0);
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null, data?: string) => void): void {
    const buf = this.rest.length ? Buffer.concat([this.rest, chunk]) : chunk;
    const whole = buf.length - (buf.length % 3);
    this.rest = Buffer.from(buf.subarray(whole));
    done(null, buf.subarray(0, whole).toString('base64'));
  }
  override _flush(done: (err?: Error | null, data?: string) => void): void {
    done(null, this.rest.toString('base64'));
  }
}

export interface WriteResult {
  /** sha512 of the (uncompressed) embedded binary, when one was embedded. */
  embeddedSha512?: string;
}

function writeChunk(out: Writable, text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    out.write(text, (err) => (err ? reject(err) : resolve()));
  });
}

/** Writes the document to `out`, streaming an embedded binary through gzip and base64. */
export async function writeIgnition(doc: IgnitionConfig, binary: BinarySource, out: Writable): Promise<WriteResult> {
  const text = serialize(doc);
  if (binary.kind === 'remote') {
    await writeChunk(out, text);
    return {};
  }
  const sourceAt = text.indexOf(JSON.stringify(EMBED_SOURCE));
  const hashAt = text.indexOf(JSON.stringify(EMBED_HASH));
  if (sourceAt < 0 || hashAt < sourceAt) throw new PivotError('internal', 'embedded binary placeholders are out of order', { fix: 'report this as a bug' });
  const prefix = JSON.stringify('data:;base64,').slice(0, -1);
  await writeChunk(out, text.slice(0, sourceAt) + prefix);
  const hash = createHash('sha512');
  const hashing = new Transform({
    transform(chunk: Buffer, _enc, done) {
      hash.update(chunk);
      done(null, chunk);
    },
  });
  try {
    await pipeline(createReadStream(binary.path), hashing, createGzip({ level: zlibConstants.Z_BEST_COMPRESSION }), new Base64Encode(), out, { end: false });
  } catch (err) {
    throw new PivotError('usage', `cannot embed ${binary.path}: ${(err as Error).message}`, {
      path: binary.path, fix: 'build the binary first (npm run build), or pass --binary-url and --binary-sha512', cause: err,
    });
  }
  const sha512 = hash.digest('hex');
  const afterSource = sourceAt + JSON.stringify(EMBED_SOURCE).length;
  await writeChunk(out, `"${text.slice(afterSource, hashAt)}${JSON.stringify(`sha512-${sha512}`)}${text.slice(hashAt + JSON.stringify(EMBED_HASH).length)}`);
  return { embeddedSha512: sha512 };
}
