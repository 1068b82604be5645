// Regenerates ignition/example.ign from ignition/example-config.json, units/ and a real build:
// the binary's hash is the sha512 of dist/node-image-pivot from `npm run build` (the line in
// dist/SHA512SUMS), the URL a placeholder that cannot resolve (.invalid, RFC 2606). The check
// (and the unit test) re-renders with the hash example.ign already has, so the file stays in
// step with units/ and the config without a rebuild on every commit; regenerate it after a build.
// Usage: node scripts/ignition/regenerate-example.ts [--check]
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readValidConfig } from '../../src/ignition/generate.ts';
import { readUnitAssets } from '../../src/ignition/assets.ts';
import { BINARY_PATH, buildIgnition, serialize, type IgnitionConfig } from '../../src/ignition/build.ts';

const root = resolve(import.meta.dirname, '..', '..');
export const EXAMPLE_URL = 'https://your-mirror.invalid/node-image-pivot/v0.1.0/node-image-pivot.gz';
export const EXAMPLE_PATH = join(root, 'ignition', 'example.ign');
export const SHA512SUMS = join(root, 'dist', 'SHA512SUMS');

/** The uncompressed binary's sha512 from the last build (what Ignition checks after gunzip). */
export function builtSha512(sums = SHA512SUMS): string {
  const line = readFileSync(sums, 'utf8').split('\n').find((l) => l.endsWith('  node-image-pivot'));
  if (!line) throw new Error(`${sums} has no node-image-pivot line: run npm run build`);
  return line.split(' ')[0]!;
}

/** The sha512 example.ign carries now. */
export function recordedSha512(text = readFileSync(EXAMPLE_PATH, 'utf8')): string {
  const doc = JSON.parse(text) as IgnitionConfig;
  const hash = doc.storage.files.find((f) => f.path === BINARY_PATH)?.contents.verification?.hash ?? '';
  return hash.replace(/^sha512-/, '');
}

export function renderExample(sha512: string): string {
  const configText = readValidConfig(join(root, 'ignition', 'example-config.json'));
  return serialize(buildIgnition({
    configText,
    binary: { kind: 'remote', url: EXAMPLE_URL, sha512, compression: 'gzip' },
    assets: readUnitAssets(join(root, 'units')),
  }));
}

if (import.meta.main) {
  if (process.argv.includes('--check')) {
    if (readFileSync(EXAMPLE_PATH, 'utf8') !== renderExample(recordedSha512())) {
      console.error('ignition/example.ign is stale: run npm run build, then node scripts/ignition/regenerate-example.ts');
      process.exitCode = 1;
    }
  } else {
    writeFileSync(EXAMPLE_PATH, renderExample(builtSha512()));
    console.log(`wrote ${EXAMPLE_PATH}`);
  }
}
