// Keeps a loopback registry with reference images up for manual experiments:
//   node scripts/bench/serve.ts [ref,ref-x2,...]   prints the registry host and a registries.conf,
// then serves until interrupted (Ctrl-C or SIGTERM), and removes its tmpfs directory.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { startRegistry } from '../../test/helpers/registry.ts';
import { pushLayout } from '../../test/helpers/oci-image.ts';
import { generateImage, SPECS } from './gen-image.ts';

const root = resolve(import.meta.dirname, '..', '..');
const names = (process.argv[2] ?? 'ref').split(',');
const stage = mkdtempSync('/dev/shm/nip-serve-');
const reg = await startRegistry({ storageDir: join(stage, 'registry') });
const conf = join(stage, 'registries.conf');
writeFileSync(conf, `[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n`);
for (const n of names) {
  const g = await generateImage(SPECS[n]!, join(root, '.cache', 'bench'));
  await pushLayout(g.layoutDir, g.tag, reg.host, `bench/${n}`);
  process.stdout.write(`${reg.host}/bench/${n}:${g.tag}\n`);
}
process.stdout.write(`registries.conf: ${conf}\n`);
const stop = (): void => { void reg.stop().finally(() => { rmSync(stage, { recursive: true, force: true }); process.exit(0); }); };
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
setInterval(() => undefined, 1 << 30);
