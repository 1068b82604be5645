// npm run bench [-- --quick] [--reps N] [--images ref,ref-x2,ref-zstd] [--variant NAME=BINARY]...
//               [--binary dist/node-image-pivot] [--only a,b,c,d,staging] [--staging-rounds N]
//               [--state-file state.json] [--out FILE]
//
// Generates the reference images (cached in .cache/bench, keyed by seed and spec), starts a
// loopback docker-registry whose storage is on the staging tmpfs, pushes them, then runs the
// contenders (see runners.ts) interleaved, REPS times each, every run into a fresh directory on
// the tmpfs. Then the /etc merge, resolve, pivot-overhead and per-layer (layers.ts) numbers. Prints a ratio table and
// writes bench/results/latest.json (full runs) or .cache/bench/quick.json (--quick).
// The staging-modes case (staging-modes.ts: full and delta staging side by side in real pivots)
// runs with the extras of a full run, or alone with --only staging (bench/results/staging-modes.json).
// docs/benchmarks.md explains every number.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { startRegistry, type RunningRegistry } from '../../test/helpers/registry.ts';
import { pushLayout } from '../../test/helpers/oci-image.ts';
import { generateImage, SPECS, type GeneratedImage } from './gen-image.ts';
import { cleanRunDir, exec, floor, pivotPull, podmanPull, skopeoUmoci, type BenchImage, type Contender, type RunResult } from './runners.ts';
import { etcMergeBench, pivotOverhead, resolveBench } from './extras.ts';
import { pivotStateFile } from './pivot-run.ts';
import { summarise, printReport, type ToolStats } from './report.ts';
import { stagingModesBench } from './staging-modes.ts';

const root = resolve(import.meta.dirname, '..', '..');
const { values } = parseArgs({
  options: {
    quick: { type: 'boolean' },
    reps: { type: 'string' },
    images: { type: 'string' },
    variant: { type: 'string', multiple: true },
    binary: { type: 'string' },
    only: { type: 'string' },
    'state-file': { type: 'string' },
    stage: { type: 'string' },
    out: { type: 'string' },
    'no-extras': { type: 'boolean' },
    'staging-rounds': { type: 'string' },
  },
});
const quick = values.quick === true;
const reps = Number(values.reps ?? (quick ? 1 : 3));
const imageNames = (values.images ?? (quick ? 'quick' : 'ref,ref-x2,ref-zstd')).split(',');
const only = values.only?.split(',');
const stagingRounds = Number(values['staging-rounds'] ?? 3);
const cacheRoot = join(root, '.cache', 'bench');
const say = (s: string): void => { process.stderr.write(`bench: ${s}\n`); };

/** From a fresh clone `npm run bench` is the one command: the Debian tools come first (as root). */
function ensureTools(): void {
  if (process.getuid?.() === 0) execFileSync('bash', [join(root, 'scripts/testbed/install-deps.sh')], { stdio: ['ignore', 'ignore', 'inherit'] });
}

function binaryPath(): string {
  const bin = resolve(values.binary ?? join(root, 'dist', 'node-image-pivot'));
  if (!values.binary && !existsSync(bin)) {
    say('building dist/node-image-pivot (npm run build)');
    execFileSync(process.execPath, [join(root, 'scripts/build/build.ts')], { stdio: 'inherit', cwd: root });
  }
  if (!existsSync(bin)) throw new Error(`${bin} does not exist`);
  return bin;
}

function gitCommit(): string {
  return spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).stdout.trim();
}

function have(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}

function machine(): Record<string, unknown> {
  return {
    cores: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memoryBytes: totalmem(),
    memoryGiB: +(totalmem() / 2 ** 30).toFixed(1),
    kernel: readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim(),
    stage: 'tmpfs',
  };
}

/** Full and delta staging side by side; without the text, which is printed instead. */
async function stagingModes(binary: string): Promise<Record<string, unknown>> {
  try {
    const { text, ...report } = await stagingModesBench({ rounds: stagingRounds, binary, cacheRoot, say });
    process.stdout.write(`\n${text}`);
    return report as unknown as Record<string, unknown>;
  } catch (err) {
    say(`staging modes: could not run (${(err as Error).message})`);
    return { unavailable: (err as Error).message };
  }
}

async function main(): Promise<void> {
  ensureTools();
  const binary = binaryPath();
  if (only?.length === 1 && only[0] === 'staging') {
    // The staging case alone: no contender table, no other extras, its own results file.
    const report = { date: new Date().toISOString(), machine: machine(), binary: { path: binary.replace(`${root}/`, ''), commit: gitCommit() }, stagingModes: await stagingModes(binary) };
    const out = values.out ?? join(root, 'bench', 'results', 'staging-modes.json');
    mkdirSync(join(out, '..'), { recursive: true });
    writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
    say(`wrote ${out.replace(`${root}/`, '')}`);
    return;
  }
  const version = (await exec([binary, '--version'])).stdout.trim();
  const commit = gitCommit();
  for (const t of ['docker-registry', 'gzip', 'tar']) if (!have(t)) throw new Error(`${t} is required (scripts/testbed/install-deps.sh)`);

  const generated: GeneratedImage[] = [];
  for (const name of imageNames) {
    const spec = SPECS[name];
    if (!spec) throw new Error(`unknown image ${name}; known: ${Object.keys(SPECS).join(', ')}`);
    say(`image ${name}: generating or reusing the cache`);
    generated.push(await generateImage(spec, cacheRoot, say));
  }

  const stageParent = values.stage ?? (existsSync('/dev/shm') ? '/dev/shm' : '/tmp');
  const stage = mkdtempSync(join(stageParent, 'nip-bench-'));
  let reg: RunningRegistry | undefined;
  const cleanup = (): void => { rmSync(stage, { recursive: true, force: true }); };
  process.on('SIGINT', () => { void reg?.stop().finally(() => { cleanup(); process.exit(130); }); });
  try {
    reg = await startRegistry({ storageDir: join(stage, 'registry') });
    const conf = join(stage, 'registries.conf');
    writeFileSync(conf, `[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n`);
    const images: BenchImage[] = [];
    for (const g of generated) {
      say(`pushing ${g.spec.name} to ${reg.host}`);
      await pushLayout(g.layoutDir, g.tag, reg.host, `bench/${g.spec.name}`);
      const floorDir = join(stage, 'floor', g.spec.name);
      mkdirSync(floorDir, { recursive: true });
      const localLayers = g.layers.map((l, i) => {
        const to = join(floorDir, `${i}`);
        copyFileSync(l.file, to);
        return to;
      });
      images.push({ name: g.spec.name, ref: `${reg.host}/bench/${g.spec.name}:${g.tag}`, compression: g.spec.compression, localLayers });
    }

    const contenders: Contender[] = [pivotPull('a', binary, conf)];
    for (const v of values.variant ?? []) {
      const [id, path] = v.split('=');
      if (!id || !path) throw new Error(`--variant wants NAME=BINARY, got ${v}`);
      contenders.push(pivotPull(id, resolve(path), conf));
    }
    const missing: Record<string, string> = {};
    if (!have('skopeo') || !have('umoci')) missing.b = 'skopeo or umoci is not installed';
    if (!have('podman')) missing.c = 'podman is not installed';
    contenders.push(skopeoUmoci(), podmanPull(), floor());
    const active = contenders.filter((c) => !only || only.includes(c.id) || !['a', 'b', 'c', 'd'].includes(c.id));

    const runs = new Map<string, RunResult[]>();
    const failures = new Map<string, string>();
    for (let rep = 0; rep < reps; rep++) {
      for (const image of images) {
        // Rotate the starting contender each repetition so no one always runs on a warm machine.
        const order = active.map((_, i) => active[(i + rep) % active.length]!);
        for (const c of order) {
          const key = `${image.name}/${c.id}`;
          const why = missing[c.id] ?? c.unavailable?.(image) ?? failures.get(key);
          if (why) {
            failures.set(key, why);
            continue;
          }
          const dir = join(stage, 'run', `${image.name}-${c.id}-${rep}`);
          mkdirSync(dir, { recursive: true });
          try {
            const r = await c.run(image, dir);
            runs.set(key, [...(runs.get(key) ?? []), r]);
            say(`rep ${rep + 1}/${reps} ${image.name} ${c.id}: ${r.seconds.toFixed(2)} s${r.peakRssKiB ? `, peak RSS ${(r.peakRssKiB / 1024).toFixed(0)} MiB` : ''}`);
          } catch (err) {
            // One failure is a finding, not a reason to stop: record why and skip it from now on.
            failures.set(key, (err as Error).message);
            say(`rep ${rep + 1}/${reps} ${image.name} ${c.id}: FAILED ${(err as Error).message}`);
          } finally {
            cleanRunDir(dir);
          }
        }
      }
    }

    const results: Record<string, Record<string, ToolStats>> = {};
    for (const image of images) {
      results[image.name] = {};
      for (const c of active) {
        results[image.name]![c.id] = summarise(c.label, runs.get(`${image.name}/${c.id}`) ?? [], failures.get(`${image.name}/${c.id}`));
      }
    }

    const extras: Record<string, unknown> = {};
    if (!values['no-extras']) {
      say('extras: /etc merge, resolve bytes, pivot overhead');
      extras.etcMerge = await etcMergeBench(root, stage, quick ? 1 : 3);
      const release = await generateImage(SPECS.release!, cacheRoot, say);
      await pushLayout(release.layoutDir, release.tag, reg.host, 'bench/release');
      extras.resolve = await resolveBench(binary, `${reg.host}/bench/release:${release.tag}`, conf, release);
      let stateFile = values['state-file'];
      if (!stateFile && !quick) {
        // No state file given: measure a real pivot in an nspawn machine (needs root).
        stateFile = await pivotStateFile(join(root, 'bench/results/pivot-state.json'), say)
          .catch((err: unknown) => { say(`pivot: could not run (${(err as Error).message})`); return undefined; });
      }
      extras.pivot = pivotOverhead(stateFile);
      if (!quick) extras.layers = perLayerBench(binary, reps);
      if (!quick && (!only || only.includes('staging'))) extras.stagingModes = await stagingModes(binary);
    }

    const report = {
      date: new Date().toISOString(),
      quick,
      reps,
      machine: machine(),
      binary: { path: binary.replace(`${root}/`, ''), version, commit },
      images: Object.fromEntries(generated.map((g) => [g.spec.name, {
        layers: g.layers.length, compression: g.spec.compression, compressedBytes: g.compressedBytes, expandedBytes: g.expandedBytes,
        files: g.spec.files, tarEntriesApprox: g.entries, seed: g.spec.seed,
      }])),
      results,
      ...extras,
    };
    const full = printReport(report, results, extras);
    const out = values.out ?? (quick ? join(cacheRoot, 'quick.json') : join(root, 'bench', 'results', 'latest.json'));
    mkdirSync(join(out, '..'), { recursive: true });
    writeFileSync(out, `${JSON.stringify({ ...report, ratios: full.ratios, targets: full.targets }, null, 2)}\n`);
    say(`wrote ${out.replace(`${root}/`, '')}`);
  } finally {
    await reg?.stop();
    cleanup();
  }
}

/**
 * Many-layer images (64-chunk ostree-native, 400-layer chunkah) against skopeo+umoci: its own
 * script (scripts/bench/layers.ts), which builds its images and registry; its report is kept here.
 */
function perLayerBench(binary: string, reps: number): unknown {
  const out = join(root, '.cache', 'bench', 'layers.json');
  const r = spawnSync(process.execPath, [join(root, 'scripts/bench/layers.ts'), '--reps', String(reps), '--binary', binary, '--out', out], { stdio: ['ignore', 'inherit', 'inherit'] });
  if (r.status !== 0) return { error: `scripts/bench/layers.ts exited ${String(r.status ?? r.signal)}` };
  return JSON.parse(readFileSync(out, 'utf8')) as unknown;
}

await main();
