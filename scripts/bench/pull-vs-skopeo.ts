// Side-by-side throughput: `node-image-pivot pull --oci-layout` vs `skopeo copy docker:// oci:`
// for the same ~200 MB image from the same loopback docker-registry. Runs are interleaved (and
// the order alternates) so that cache warmth and machine noise hit both tools alike. Everything
// is staged on /dev/shm so disk speed does not decide the result.
//
//   node scripts/bench/pull-vs-skopeo.ts [--mb 200] [--runs 3]
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { buildOciLayout, gzip, OCI_LAYER_GZIP, pushLayout, simpleTar } from '../../test/helpers/oci-image.ts';
import { startRegistry } from '../../test/helpers/registry.ts';

const { values } = parseArgs({ options: { mb: { type: 'string', default: '200' }, runs: { type: 'string', default: '3' } } });
const totalMb = Number(values.mb);
const runs = Number(values.runs);
const root = join(import.meta.dirname, '..', '..');
const stage = mkdtempSync('/dev/shm/nip-bench-');

function timed(cmd: string, args: string[]): { secs: number; stdout: string } {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' } });
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0) throw new Error(`${cmd} failed (${r.status}): ${r.stderr?.toString().slice(0, 2000)}`);
  return { secs, stdout: r.stdout.toString() };
}

const stats = (xs: number[]): string => {
  const sorted = [...xs].sort((a, b) => a - b);
  return `median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(2)} s, min ${sorted[0]!.toFixed(2)} s, max ${sorted.at(-1)!.toFixed(2)} s`;
};

const reg = await startRegistry({ storageDir: join(stage, 'registry') });
try {
  // Four layers of random bytes: incompressible, so gzip level 1 barely changes their size and
  // both tools move the same bytes. The pull itself never decompresses (OCI layouts keep blobs).
  const layerCount = 4;
  const layers = [];
  process.stderr.write(`building a ${totalMb} MB image in ${stage}...\n`);
  for (let i = 0; i < layerCount; i++) {
    const tar = await simpleTar({ [`data/part${i}.bin`]: randomBytes(Math.floor((totalMb * 1024 * 1024) / layerCount)) });
    layers.push({ data: await gzip(tar, 1), mediaType: OCI_LAYER_GZIP });
  }
  const img = await buildOciLayout(join(stage, 'src'), { tag: 'v1', layers });
  const bytes = img.layers.reduce((n, l) => n + l.size, 0);
  await pushLayout(img.layoutDir, 'v1', reg.host, 'bench/img');
  rmSync(img.layoutDir, { recursive: true, force: true });
  const conf = join(stage, 'registries.conf');
  writeFileSync(conf, `[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n`);
  const ref = `${reg.host}/bench/img:v1`;

  const ours: number[] = [];
  // Our own wall time from command start to layout rename, i.e. without Node start-up.
  const oursInside: number[] = [];
  const skopeo: number[] = [];
  const runOurs = (): void => {
    const out = join(stage, 'ours');
    // The single executable is what ships; the TypeScript source (type-stripped at every start)
    // only stands in when it has not been built.
    const binary = join(root, 'dist', 'node-image-pivot');
    const [cmd, ...pre] = existsSync(binary) ? [binary] : [process.execPath, join(root, 'src', 'main.ts')];
    const r = timed(cmd!, [...pre, 'pull', ref, '--oci-layout', out, '--registries-conf', conf, '--json']);
    ours.push(r.secs);
    oursInside.push((JSON.parse(r.stdout) as { seconds: number }).seconds);
    rmSync(out, { recursive: true, force: true });
  };
  const runSkopeo = (): void => {
    const out = join(stage, 'skopeo');
    skopeo.push(timed('skopeo', ['copy', '-q', '--src-tls-verify=false', `docker://${ref}`, `oci:${out}:v1`]).secs);
    rmSync(out, { recursive: true, force: true });
  };
  for (let i = 0; i < runs; i++) {
    if (i % 2 === 0) { runOurs(); runSkopeo(); } else { runSkopeo(); runOurs(); }
    process.stderr.write(`run ${i + 1}: ours ${ours.at(-1)!.toFixed(2)} s, skopeo ${skopeo.at(-1)!.toFixed(2)} s\n`);
  }
  const mb = bytes / 1024 / 1024;
  const rate = (xs: number[]): string => `${(mb / [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!).toFixed(0)} MiB/s`;
  console.log(`image: ${mb.toFixed(1)} MiB in ${layerCount} layers, loopback docker-registry, staged on /dev/shm, ${runs} interleaved runs`);
  console.log(`node-image-pivot pull --oci-layout: ${stats(ours)} (${rate(ours)} at the median)`);
  console.log(`  of which inside the pull command     : ${stats(oursInside)} (${rate(oursInside)} at the median; the rest is Node start-up and module loading)`);
  console.log(`skopeo copy docker:// oci:         : ${stats(skopeo)} (${rate(skopeo)} at the median)`);
} finally {
  await reg.stop();
  rmSync(stage, { recursive: true, force: true });
}
