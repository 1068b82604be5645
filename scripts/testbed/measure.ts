// The foundation's numbers (issue 2): binary size, cold start of `--version` (median of 10),
// rootfs build time with a cold cache (a fresh temp cache dir, so the shared cache is not
// disturbed), warm from the tarball (extract only) and fully warm, and the smoke e2e wall time.
//   node scripts/testbed/measure.ts [--skip-cold] [--skip-smoke]
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO_ROOT, rootfsPaths } from './rootfs.ts';

const binary = join(REPO_ROOT, 'dist', 'node-image-pivot');
const node = process.execPath;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function timeIt(fn: () => void): number {
  const t0 = performance.now();
  fn();
  return (performance.now() - t0) / 1000;
}

const results: Record<string, unknown> = {};
results.binaryMB = Number((statSync(binary).size / 1e6).toFixed(1));
execFileSync(binary, ['--version']);
results.versionStartMs = Math.round(1000 * median(Array.from({ length: 10 }, () => timeIt(() => execFileSync(binary, ['--version'])))));

// Rootfs timings run ensureRootfs in a child with its own cache dir.
const ensure = `import { ensureRootfs } from ${JSON.stringify(join(REPO_ROOT, 'scripts/testbed/rootfs.ts'))}; await ensureRootfs({ say: () => {} });`;
function ensureIn(cache: string): number {
  return timeIt(() => {
    const r = spawnSync(node, ['--input-type=module', '-e', ensure], { env: { ...process.env, NODE_IMAGE_PIVOT_TESTBED_CACHE: cache }, stdio: 'inherit' });
    if (r.status !== 0) throw new Error('ensureRootfs failed');
  });
}
if (!process.argv.includes('--skip-cold')) {
  const cache = mkdtempSync(join(tmpdir(), 'nip-measure-cache-'));
  try {
    results.rootfsColdSeconds = Number(ensureIn(cache).toFixed(1));
    const { tree } = rootfsPaths();
    rmSync(join(cache, tree.split('/').pop()!), { recursive: true, force: true });
    results.rootfsFromTarballSeconds = Number(ensureIn(cache).toFixed(1));
    results.rootfsWarmSeconds = Number(ensureIn(cache).toFixed(2));
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
}
if (!process.argv.includes('--skip-smoke')) {
  results.smokeE2eSeconds = Number(timeIt(() => {
    const r = spawnSync(join(REPO_ROOT, 'node_modules/.bin/vitest'), ['run', '--project', 'e2e', 'test/e2e/smoke.test.ts'], { cwd: REPO_ROOT, stdio: 'ignore' });
    if (r.status !== 0) throw new Error('smoke e2e failed');
  }).toFixed(2));
}
console.log(JSON.stringify(results, null, 2));
