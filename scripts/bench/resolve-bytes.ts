// The resolve number of docs/benchmarks.md alone: the bytes `resolve` fetches from the generated
// release image (SPECS.release), without the rest of the benchmark.
//   node scripts/bench/resolve-bytes.ts [--binary dist/node-image-pivot]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pushLayout } from '../../test/helpers/oci-image.ts';
import { startRegistry } from '../../test/helpers/registry.ts';
import { resolveBench } from './extras.ts';
import { generateImage, SPECS } from './gen-image.ts';

const root = resolve(import.meta.dirname, '..', '..');
const { values } = parseArgs({ options: { binary: { type: 'string' } } });
const stage = mkdtempSync('/dev/shm/nip-resolve-bytes-');
const reg = await startRegistry({ storageDir: join(stage, 'registry') });
try {
  const conf = join(stage, 'registries.conf');
  writeFileSync(conf, `[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n`);
  const release = await generateImage(SPECS.release!, join(root, '.cache', 'bench'));
  await pushLayout(release.layoutDir, release.tag, reg.host, 'bench/release');
  const binary = resolve(values.binary ?? join(root, 'dist', 'node-image-pivot'));
  process.stdout.write(`${JSON.stringify(await resolveBench(binary, `${reg.host}/bench/release:${release.tag}`, conf, release))}\n`);
} finally {
  await reg.stop();
  rmSync(stage, { recursive: true, force: true });
}
