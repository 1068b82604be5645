// CPU profile of one `pull --dest` of a reference image, with the bundle under node --cpu-prof.
//   node scripts/bench/profile.ts [--image ref] [--top 25] [--keep DIR]
// Prints wall time, the top functions by self time (with their file) and the share of idle
// time on the main thread, which says whether the pull waits (I/O, inflater) or computes.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startRegistry } from '../../test/helpers/registry.ts';
import { pushLayout } from '../../test/helpers/oci-image.ts';
import { generateImage, SPECS } from './gen-image.ts';
import { exec } from './runners.ts';

interface ProfileNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
interface Profile { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[] }

const root = resolve(import.meta.dirname, '..', '..');
const { values } = parseArgs({ options: { image: { type: 'string' }, top: { type: 'string' }, keep: { type: 'string' } } });
const spec = SPECS[values.image ?? 'ref'];
if (!spec) throw new Error(`unknown image ${values.image}`);
const bundle = join(root, 'dist', 'node-image-pivot.cjs');
execFileSync(process.execPath, [join(root, 'scripts/build/build.ts'), '--bundle-only'], { stdio: 'ignore' });
const img = await generateImage(spec, join(root, '.cache', 'bench'));
const stage = mkdtempSync('/dev/shm/nip-prof-');
const reg = await startRegistry({ storageDir: join(stage, 'registry') });
try {
  await pushLayout(img.layoutDir, img.tag, reg.host, `bench/${spec.name}`);
  const conf = join(stage, 'registries.conf');
  writeFileSync(conf, `[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n`);
  const profDir = join(stage, 'prof');
  mkdirSync(profDir);
  const r = await exec([process.execPath, '--cpu-prof', '--cpu-prof-dir', profDir, bundle, 'pull', `${reg.host}/bench/${spec.name}:${img.tag}`,
    '--dest', join(stage, 'dest'), '--registries-conf', conf, '--json'], { pollRss: true, env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' } });
  const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'))!;
  if (values.keep) {
    mkdirSync(values.keep, { recursive: true });
    copyFileSync(join(profDir, file), join(values.keep, `${spec.name}.cpuprofile`));
  }
  const prof = JSON.parse(readFileSync(join(profDir, file), 'utf8')) as Profile;
  const byId = new Map(prof.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  prof.samples.forEach((id, i) => {
    const n = byId.get(id)!;
    const dt = prof.timeDeltas[i] ?? 0;
    total += dt;
    const url = n.callFrame.url.replace(/^.*\/(node_modules\/)?/, '');
    const key = `${n.callFrame.functionName || '(anonymous)'} ${url}:${n.callFrame.lineNumber + 1}`;
    self.set(key, (self.get(key) ?? 0) + dt);
  });
  const top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, Number(values.top ?? 25));
  process.stdout.write(`wall ${r.seconds.toFixed(2)} s, peak RSS ${((r.peakRssKiB ?? 0) / 1024).toFixed(0)} MiB, profiled ${(total / 1e6).toFixed(2)} s\n`);
  for (const [k, us] of top) process.stdout.write(`${((us / total) * 100).toFixed(1).padStart(5)}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${k}\n`);
} finally {
  await reg.stop();
  rmSync(stage, { recursive: true, force: true });
}
