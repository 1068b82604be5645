// Per-layer cost: many-layer bootable images against the same content in one layer, for
// `node-image-pivot pull --dest` (a) and skopeo copy + umoci unpack (b), side by side.
//
//   node scripts/bench/layers.ts [--reps 3] [--binary dist/node-image-pivot] [--out FILE]
//
// Images (built here, not cached: about 20 s):
//   ostree65    an ostree-native image from a real `ostree commit` (2,000 files), exported as
//               ostree-ext does: the commit layer + 64 chunk layers (its maximum), + 1 derived layer
//   ostree2     the same commit in one ostree layer, + the same derived layer
//   chunkah400  a chunkah-style image: 400 plain content layers of 4 files each
//   chunkah1    the same 1,600 files in one layer
// Per-layer overhead = (t(many) - t(few)) / (layers(many) - layers(few)), from the medians.
// Runs are interleaved and the first contender alternates; everything is staged on /dev/shm.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pushLayout, type BuiltImage } from '../../test/helpers/oci-image.ts';
import { buildChunkahImage, buildOstreeImage } from '../../test/helpers/ostree-image.ts';
import { startRegistry } from '../../test/helpers/registry.ts';
import { derivedLayer, makeCommit } from '../../test/unpack/ostree-fixture.ts';
import { cleanRunDir, pivotPull, skopeoUmoci, type BenchImage, type RunResult } from './runners.ts';

const root = resolve(import.meta.dirname, '..', '..');
const { values } = parseArgs({ options: { reps: { type: 'string', default: '3' }, binary: { type: 'string' }, out: { type: 'string' } } });
const reps = Number(values.reps);
const binary = resolve(values.binary ?? join(root, 'dist', 'node-image-pivot'));
const stage = mkdtempSync('/dev/shm/nip-bench-layers-');
const say = (s: string): void => { process.stderr.write(`bench-layers: ${s}\n`); };
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const reg = await startRegistry({ storageDir: join(stage, 'registry') });
try {
  say('building images');
  const commit = await makeCommit(join(stage, 'commit'), 2000);
  const built: Array<{ name: string; img: BuiltImage }> = [
    { name: 'ostree65', img: await buildOstreeImage(join(stage, 'l-ostree65'), commit, { chunks: 64, xattrsLink: 'file', derived: [derivedLayer()] }) },
    { name: 'ostree2', img: await buildOstreeImage(join(stage, 'l-ostree2'), commit, { chunks: 0, xattrsLink: 'file', derived: [derivedLayer()] }) },
    { name: 'chunkah400', img: await buildChunkahImage(join(stage, 'l-chunkah400'), { layers: 400 }) },
    { name: 'chunkah1', img: await buildChunkahImage(join(stage, 'l-chunkah1'), { layers: 400, oneLayer: true }) },
  ];
  const images: Array<BenchImage & { layers: number }> = [];
  for (const { name, img } of built) {
    await pushLayout(img.layoutDir, 'latest', reg.host, `bench/${name}`);
    images.push({ name, ref: `${reg.host}/bench/${name}:latest`, compression: 'gzip', localLayers: [], layers: img.layers.length });
  }
  const conf = join(stage, 'registries.conf');
  writeFileSync(conf, `[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n`);
  const contenders = [pivotPull('a', binary, conf), skopeoUmoci()];
  const results: Record<string, Record<string, RunResult[]>> = {};
  for (let rep = 0; rep < reps; rep++) {
    for (const image of images) {
      const order = rep % 2 === 0 ? contenders : [...contenders].reverse();
      for (const c of order) {
        const dir = join(stage, `run-${c.id}`);
        mkdirSync(dir, { recursive: true });
        try {
          const r = await c.run(image, dir);
          ((results[image.name] ??= {})[c.id] ??= []).push(r);
          say(`rep ${rep + 1} ${image.name} ${c.id}: ${r.seconds.toFixed(2)} s`);
        } finally {
          cleanRunDir(dir);
        }
      }
    }
  }
  const secs = (image: string, id: string): number => median(results[image]![id]!.map((r) => r.seconds));
  const rss = (image: string): number => Math.max(...results[image]!.a!.map((r) => r.peakRssKiB ?? 0)) / 1024;
  const layersOf = (name: string): number => images.find((i) => i.name === name)!.layers;
  const perLayerMs = (many: string, few: string, id: string): number => ((secs(many, id) - secs(few, id)) / (layersOf(many) - layersOf(few))) * 1000;
  const report = {
    reps,
    images: Object.fromEntries(images.map((i) => [i.name, {
      layers: i.layers,
      a: { medianSeconds: secs(i.name, 'a'), peakRssMiB: rss(i.name) },
      b: { medianSeconds: secs(i.name, 'b') },
    }])),
    perLayerMs: {
      ostree: { a: perLayerMs('ostree65', 'ostree2', 'a'), b: perLayerMs('ostree65', 'ostree2', 'b') },
      chunkah: { a: perLayerMs('chunkah400', 'chunkah1', 'a'), b: perLayerMs('chunkah400', 'chunkah1', 'b') },
    },
  };
  for (const i of images) {
    console.log(`${i.name.padEnd(11)} ${String(i.layers).padStart(3)} layers: a ${secs(i.name, 'a').toFixed(2)} s (peak RSS ${rss(i.name).toFixed(0)} MiB), b ${secs(i.name, 'b').toFixed(2)} s`);
  }
  for (const [kind, v] of Object.entries(report.perLayerMs)) console.log(`per-layer overhead, ${kind}: a ${v.a.toFixed(1)} ms/layer, b ${v.b.toFixed(1)} ms/layer`);
  const out = values.out ?? join(root, '.cache', 'bench', 'layers.json');
  mkdirSync(join(out, '..'), { recursive: true });
  writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
  say(`wrote ${out}`);
} finally {
  await reg.stop();
  rmSync(stage, { recursive: true, force: true });
}
