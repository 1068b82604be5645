// Delta staging (issue 14) on a live VM whose RAM cannot hold the staged image in full, under
// enforcing. In the same guest: `staging: "full"` is refused by the space preflight with the
// numbers (exit 9), all old; then `staging: "auto"` picks delta because the root lives in RAM,
// and the same reserve leaves room for it: the pivot completes, the checks of a pivot under the
// new policy hold, and the OOM killer stays away. The reserve is sized in the guest so that
// what RAM offers staging lies between the compressed image (delta's least need) and three
// times it (full's), whatever the guest's MemAvailable is after this boot.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Vm } from './helpers/vm.ts';
import { KUBELET_MARKER, NEW_ELF, NODE_VERSION_FILE } from './fixtures/node-image.ts';
import { bootIdleGuest, setUpVmPivot, type VmPivotFixture } from './fixtures/pivot-setup.ts';
import {
  AGENT, expectAllOld, expectPivotedUnderNewPolicy, oomKills, PEAK_RSS_PY, PIVOT_DEADLINE_MS, phaseFacts, phaseTimes, pivotState, uptimeSeconds,
} from './fixtures/pivot-checks.ts';

const MEMORY_MIB = 1024;
const CONFIG = '/etc/node-image-pivot/config.json';
const MIB = 2 ** 20;
const mib = (n: number): string => `${(n / MIB).toFixed(0)} MiB`;

let fx: VmPivotFixture;
let vm: Vm;
let compressedBytes = 0;
let reserveMiB = 0;
let firstRun = Infinity;

/** The image's compressed size as the agent counts it: the manifest's layer sizes. */
function layoutCompressedBytes(layoutDir: string, manifestDigest: string): number {
  const manifest = JSON.parse(readFileSync(join(layoutDir, 'blobs/sha256', manifestDigest.replace(/^sha256:/, '')), 'utf8')) as { layers: Array<{ size: number }> };
  return manifest.layers.reduce((sum, l) => sum + l.size, 0);
}

async function runAgent(): Promise<{ exitCode: number; peakRssKiB: number; out: string }> {
  const r = await vm.exec(['python3', '-c', PEAK_RSS_PY, AGENT, 'run', '--no-isolate'], { timeoutMs: PIVOT_DEADLINE_MS });
  const m = /exit (-?\d+) maxrss_kib (\d+)\n$/.exec(r.stdout);
  expect(m, `${r.stdout}\n${r.stderr}`).not.toBeNull();
  return { exitCode: Number(m![1]), peakRssKiB: Number(m![2]), out: `${r.stdout}\n${r.stderr}` };
}

async function writeConfig(config: Record<string, unknown>): Promise<void> {
  const r = await vm.sh(`cat > ${CONFIG}.tmp && mv ${CONFIG}.tmp ${CONFIG} && restorecon ${CONFIG} && cat ${CONFIG}`, { input: JSON.stringify(config) });
  expect(JSON.parse(r.stdout), r.stderr).toEqual(config);
}

beforeAll(async () => {
  fx = await setUpVmPivot(['module']);
  compressedBytes = layoutCompressedBytes(join(fx.workDir, 'layout-module'), fx.images.module.manifestDigest);
  vm = await bootIdleGuest(fx, 'delta-ram', MEMORY_MIB);
});

afterAll(async () => {
  await vm?.dispose();
  await fx?.cleanup();
});

describe('vm: delta staging where RAM cannot hold the full image (enforcing)', () => {
  it('staging "full" is refused by the space preflight with the numbers, all old', async () => {
    const avail = Number((await vm.sh("awk '/MemAvailable/ {print $2 * 1024}' /proc/meminfo")).stdout.trim());
    // RAM offers staging twice the compressed image: delta's least need fits, full's (x3) does not.
    reserveMiB = Math.floor((avail - 2 * compressedBytes) / MIB);
    expect(reserveMiB, `MemAvailable ${mib(avail)} leaves no reserve above 2 x ${mib(compressedBytes)}`).toBeGreaterThan(128);
    process.stderr.write(`vm delta-ram (${MEMORY_MIB} MiB guest): MemAvailable ${mib(avail)}, image ${mib(compressedBytes)} compressed, stagingReserveMiB ${reserveMiB}\n`);
    await writeConfig({ image: fx.guestRef('module'), staging: 'full', stagingReserveMiB: reserveMiB });
    firstRun = await uptimeSeconds(vm);
    const r = await runAgent();
    expect(r.exitCode, r.out).toBe(9);
    const s = await pivotState(vm);
    expect(s.result).toBe('failed');
    expect(s.error?.line).toMatch(/staging needs \d+ MiB \(\d+ MiB compressed x spaceFactor 3\) but only \d+ MiB is free in RAM .*Fix: give the node more RAM/);
    process.stderr.write(`vm delta-ram: full refused: ${s.error?.line}; agent peak RSS ${(r.peakRssKiB / 1024).toFixed(0)} MiB\n`);
    expect((await vm.sh(`ls -A /run/node-image-pivot/staging | wc -l`)).stdout).toBe('0\n');
    await expectAllOld(vm);
    expect(await oomKills(vm)).toBe('');
  }, PIVOT_DEADLINE_MS);

  it('staging "auto" picks delta (the root is in RAM), fits the same reserve and pivots under the new policy', async () => {
    await writeConfig({ image: fx.guestRef('module'), stagingReserveMiB: reserveMiB });
    const r = await runAgent();
    const s = await pivotState(vm);
    expect(r.exitCode, `${r.out}\n${JSON.stringify(s).slice(0, 2000)}`).toBe(0);
    expect(s.result).toBe('done');
    const pull = phaseFacts(s, 'pull') as {
      stagingMode: string; stagingModeReason: string; staging: { filesystem: string };
      stagingUsedBytes: number; peakRssBytes: number; compressedBytes: number; expandedBytes: number; delta?: Record<string, number>;
    };
    const used = Number((await vm.sh('df -B1 --output=used /run/node-image-pivot/staging | tail -n 1')).stdout.trim());
    process.stderr.write(`vm delta-ram: ${phaseTimes(s)}; staging ${pull.stagingMode} (${pull.stagingModeReason}); ${pull.staging.filesystem}; `
      + `${mib(pull.stagingUsedBytes)} used after the pull, ${mib(used)} after the pivot (${mib(pull.compressedBytes)} compressed, ${mib(pull.expandedBytes)} expanded); `
      + `delta ${JSON.stringify(pull.delta)}; agent peak RSS ${mib(pull.peakRssBytes)} (rusage of the run ${(r.peakRssKiB / 1024).toFixed(0)} MiB)\n`);
    expect(pull.stagingMode).toBe('delta');
    expect(pull.stagingModeReason).toMatch(/^staging "auto": the root lives in RAM \(/);
    expect(pull.stagingModeReason).not.toMatch(/falling back/);
    // The log line (JSON on stderr, so its quotes are escaped).
    expect(r.out).toMatch(/staging: delta \(staging \\"auto\\": the root lives in RAM/);
    expect(pull.stagingUsedBytes).toBeLessThan(pull.expandedBytes / 4);
    // /usr is the delta overlay over the private bind of the booted /usr.
    const usr = (await vm.sh('findmnt -n -o FSTYPE,OPTIONS /usr | tail -n 1')).stdout.trim();
    expect(usr).toMatch(/^overlay .*lowerdir=.*\/usr:\/run\/node-image-pivot\/booted-usr/);
    expect(usr.split(/[ ,]/)).toContain('ro');
    expect((await vm.sh(`cat ${NODE_VERSION_FILE}`)).stdout).toMatch(/^4\.20\.0-vm-module/);
    // The kubelet stand-in of the node image, started as after a service-mode pivot.
    const k = await vm.exec(['systemctl', 'start', 'kubelet.service'], { timeoutMs: 600_000 });
    expect(k.exitCode, k.stderr).toBe(0);
    // A new ELF (the delta's top layer) runs, from the kubelet's domain and from initrc_t.
    expect((await vm.sh(`cat ${KUBELET_MARKER}.elf`)).stdout.trim()).toBe('0');
    expect((await vm.exec([NEW_ELF])).exitCode).toBe(0);
    await expectPivotedUnderNewPolicy(vm, { isolated: false, sinceSeconds: firstRun });
    expect(await oomKills(vm)).toBe('');
  }, PIVOT_DEADLINE_MS + 1_200_000);
});
