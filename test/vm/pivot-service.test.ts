// Service mode under enforcing (issue 11, items 3.3, 3.4 and 5), in a 2 GiB guest: /run, where
// stagingDir lives, is 20% of that (about 400 MiB), less than staging this image needs at its
// peak (blobs plus tree), so the pivot only fits because staging gets a tmpfs of its own sized
// to RAM. First two bad node images, each stopping before the switch with its reason and
// leaving the node all old; then node-image-overlay.service, ordered before a kubelet stand-in
// that starts in its own domain.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootVm, type Vm } from './helpers/vm.ts';
import { installIgnition, registriesConf, registryPort, setUpVmPivot, type VmPivotFixture } from './fixtures/pivot-setup.ts';
import {
  AGENT, expectAllOld, expectPivotedUnderNewPolicy, oomKills, PIVOT_DEADLINE_MS, phaseFacts, phaseTimes, pivotState, uptimeSeconds,
} from './fixtures/pivot-checks.ts';

const MEMORY_MIB = 2048;
const kubeletUnit = [
  '[Unit]', 'Description=kubelet stand-in, ordered after the overlay', 'Requires=node-image-overlay.service', 'After=node-image-overlay.service',
  '[Service]', 'Type=oneshot', 'RemainAfterExit=yes', 'ExecStart=/usr/bin/kubelet', '',
].join('\n');

let fx: VmPivotFixture;
let vm: Vm;
/** When the first agent run of this file started (seconds since boot): denials count from here. */
let firstRun = Infinity;

beforeAll(async () => {
  fx = await setUpVmPivot(['module', 'none', 'unloadable']);
  vm = await bootVm({
    name: 'pivot-service', memoryMiB: MEMORY_MIB,
    forwards: [{ guestPort: 5000, hostPort: registryPort(fx.registry) }],
    provision: {
      ignition: [installIgnition(fx.workDir, { image: fx.guestRef('module') }, { generator: false })],
      files: [
        registriesConf(),
        { path: '/etc/systemd/system/kubelet.service', contents: kubeletUnit },
        { path: '/etc/nip-vm/no-policy.json', contents: JSON.stringify({ image: fx.guestRef('none') }) },
        { path: '/etc/nip-vm/unloadable.json', contents: JSON.stringify({ image: fx.guestRef('unloadable') }) },
      ],
      selinuxBooleans: { allow_execmem: true },
    },
  });
  await vm.waitForUnit('multi-user.target', 'active', 600_000);
});

afterAll(async () => {
  await vm?.dispose();
  await fx?.cleanup();
});

describe('vm: service mode and bad input, allow_execmem on', () => {
  it('a node image without an SELinux policy stops before the switch with a clear error', async () => {
    firstRun = await uptimeSeconds(vm);
    const r = await vm.exec([AGENT, 'run', '--no-isolate', '--config', '/etc/nip-vm/no-policy.json'], { timeoutMs: PIVOT_DEADLINE_MS });
    const s = await pivotState(vm);
    process.stderr.write(`vm bad input (no policy): exit=${r.exitCode} ${s.error?.line}\n`);
    expect(r.exitCode).toBe(4);
    expect(s.error?.line).toMatch(/^verification: the node image has no SELinux policy .* Fix: build the node image with its SELinux policy/);
    await expectAllOld(vm);
  }, PIVOT_DEADLINE_MS);

  it('a node image whose policy the kernel refuses leaves the node all old, with the reason', async () => {
    const r = await vm.exec([AGENT, 'run', '--no-isolate', '--config', '/etc/nip-vm/unloadable.json'], { timeoutMs: PIVOT_DEADLINE_MS });
    const s = await pivotState(vm);
    process.stderr.write(`vm bad input (unloadable policy): exit=${r.exitCode} ${s.error?.line}\n`);
    expect(r.exitCode).toBe(4);
    expect(s.error?.line).toMatch(/^verification: the kernel refused the SELinux policy .*policy\.33 \(\w+\), so nothing was switched/);
    await expectAllOld(vm);
  }, PIVOT_DEADLINE_MS);

  it('node-image-overlay.service pivots before the kubelet stand-in, which starts in its own domain; staging fits only in its own tmpfs', async () => {
    const runBytes = Number((await vm.sh('findmnt -n -b -o SIZE /run')).stdout.trim());
    const started = await vm.exec(['systemctl', 'start', 'kubelet.service'], { timeoutMs: PIVOT_DEADLINE_MS });
    expect(started.exitCode, `${started.stderr}\n${(await vm.journal('node-image-overlay.service')).split('\n').slice(-30).join('\n')}`).toBe(0);
    const s = await pivotState(vm);
    expect(s.result).toBe('done');
    expect(s.phases?.find((p) => p.name === 'isolate')?.result).toBe('skipped');
    const times = await vm.sh('systemctl show -P ActiveEnterTimestampMonotonic node-image-overlay.service; systemctl show -P ExecMainStartTimestampMonotonic kubelet.service');
    const [overlayDone, kubeletStart] = times.stdout.trim().split('\n').map(Number);
    expect(overlayDone).toBeGreaterThan(0);
    expect(kubeletStart).toBeGreaterThanOrEqual(overlayDone!);
    // Staging in RAM: its own tmpfs, holding more than /run (20% of RAM) could have.
    const pull = phaseFacts(s, 'pull') as { staging: { filesystem: string }; stagingUsedBytes: number; peakRssBytes: number; compressedBytes: number; expandedBytes: number };
    const mib = (n: number): string => `${(n / 2 ** 20).toFixed(0)} MiB`;
    process.stderr.write(`vm service mode (${MEMORY_MIB} MiB guest): ${phaseTimes(s)}; /run ${mib(runBytes)}; staging ${pull.staging.filesystem}, ${mib(pull.stagingUsedBytes)} used after the pull (${mib(pull.compressedBytes)} compressed, ${mib(pull.expandedBytes)} expanded); agent peak RSS ${mib(pull.peakRssBytes)}\n`);
    expect(pull.staging.filesystem).toBe('own tmpfs');
    expect(pull.compressedBytes + pull.expandedBytes).toBeGreaterThan(runBytes);
    expect(await oomKills(vm)).toBe('');
    await expectPivotedUnderNewPolicy(vm, { isolated: false, sinceSeconds: firstRun });
  }, PIVOT_DEADLINE_MS + 600_000);
});
