// Staging in RAM (issue 11, item 3.3) on a live VM too small for the image: the guest's RAM minus
// the agent's reserve (stagingReserveMiB) cannot hold the staged image, so the space preflight
// refuses with the numbers (exit 9) before anything changes, and the OOM killer never ends the
// agent. (The case with enough RAM, where /run alone would be too small: pivot-service.test.ts.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Vm } from './helpers/vm.ts';
import { NODE_VERSION_FILE } from './fixtures/node-image.ts';
import { bootIdleGuest, setUpVmPivot, type VmPivotFixture } from './fixtures/pivot-setup.ts';
import { AGENT, oomKills, PEAK_RSS_PY, pivotState } from './fixtures/pivot-checks.ts';

const MEMORY_MIB = 1280;

let fx: VmPivotFixture;
let vm: Vm;

beforeAll(async () => {
  fx = await setUpVmPivot(['module']);
  vm = await bootIdleGuest(fx, 'ram', MEMORY_MIB);
});

afterAll(async () => {
  await vm?.dispose();
  await fx?.cleanup();
});

describe('vm: staging in RAM, too little of it', () => {
  it('/run is a tmpfs capped at 20% of RAM, nosuid,nodev,noexec: no place for a node image', async () => {
    const [size, total] = (await vm.sh("findmnt -n -b -o SIZE /run; awk '/MemTotal/ {print $2 * 1024}' /proc/meminfo")).stdout.trim().split('\n').map(Number);
    expect(size! / total!).toBeGreaterThan(0.19);
    expect(size! / total!).toBeLessThan(0.21);
    expect((await vm.sh('findmnt -n -o OPTIONS /run')).stdout.trim().split(',')).toEqual(expect.arrayContaining(['nosuid', 'nodev', 'noexec']));
    process.stderr.write(`vm ram: MemTotal ${(total! / 2 ** 20).toFixed(0)} MiB, /run ${(size! / 2 ** 20).toFixed(0)} MiB\n`);
  });

  it('the preflight refuses with the numbers before anything changes, and the OOM killer stays away', async () => {
    const r = await vm.exec(['python3', '-c', PEAK_RSS_PY, AGENT, 'run', '--no-isolate'], { timeoutMs: 1_500_000 });
    const m = /exit (-?\d+) maxrss_kib (\d+)\n$/.exec(r.stdout);
    expect(m, `${r.stdout}\n${r.stderr}`).not.toBeNull();
    expect(Number(m![1]), r.stderr).toBe(9);
    const s = await pivotState(vm);
    expect(s.result).toBe('failed');
    expect(s.error?.line).toMatch(/staging needs \d+ MiB \(\d+ MiB compressed x spaceFactor 3\) but only \d+ MiB is free in RAM .*Fix: give the node more RAM/);
    process.stderr.write(`vm ram (${MEMORY_MIB} MiB guest): refused: ${s.error?.line}; agent peak RSS ${(Number(m![2]) / 1024).toFixed(0)} MiB\n`);
    // Nothing was staged or switched; the staging tmpfs of its own is there, empty, for a rerun.
    expect((await vm.sh(`test -e ${NODE_VERSION_FILE} && echo new || echo old; ls -A /run/node-image-pivot/staging | wc -l`)).stdout).toBe('old\n0\n');
    expect(await oomKills(vm)).toBe('');
  });
});
