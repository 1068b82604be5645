// Regenerates ignition/example.ign from ignition/example-config.json and units/. The URL and hash
// are fixed placeholders so the output only changes when the units or the config change; a unit
// test fails when example.ign is stale. Usage: node scripts/ignition/regenerate-example.ts [--check]
import { readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { readValidConfig } from '../../src/ignition/generate.ts';
import { readUnitAssets } from '../../src/ignition/assets.ts';
import { buildIgnition, serialize } from '../../src/ignition/build.ts';

const root = resolve(import.meta.dirname, '..', '..');
export const EXAMPLE_URL = 'https://mirror.example.com/node-image-pivot/v0.1.0/node-image-pivot-linux-amd64';
// sha512 of the empty string: obviously a placeholder, and valid in form.
export const EXAMPLE_SHA512 = 'cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e';
export const EXAMPLE_PATH = join(root, 'ignition', 'example.ign');

export function renderExample(): string {
  const configText = readValidConfig(join(root, 'ignition', 'example-config.json'));
  return serialize(buildIgnition({
    configText,
    binary: { kind: 'remote', url: EXAMPLE_URL, sha512: EXAMPLE_SHA512 },
    assets: readUnitAssets(join(root, 'units')),
  }));
}

if (import.meta.main) {
  const text = renderExample();
  if (process.argv.includes('--check')) {
    if (readFileSync(EXAMPLE_PATH, 'utf8') !== text) {
      console.error('ignition/example.ign is stale: run node scripts/ignition/regenerate-example.ts');
      process.exitCode = 1;
    }
  } else {
    writeFileSync(EXAMPLE_PATH, text);
    console.log(`wrote ${EXAMPLE_PATH}`);
  }
}
