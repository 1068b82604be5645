// The full pivot under an enforcing kernel (issue 11, items 3.1, 3.2 and 3.5), the way a live
// ISO runs it: the generator boots into node-image-pivot.target, the agent pulls, loads the node
// image's policy (a module with a domain for the kubelet stand-in, types for a new /etc
// directory and an existing /usr path), labels, switches /usr, merges /etc and isolates to
// multi-user.target. Debian's refpolicy with allow_execmem on, as RHCOS's unconfined_service_t
// allows. Then, on the same VM (TCG minutes are spent once): a module that was not loaded at
// boot loads from the booted kernel's modules while the node image carries another kernel's;
// and a reboot brings the live VM back on the boot image, and it pivots again.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootVm, type Vm } from './helpers/vm.ts';
import { NODE_KERNEL, NODE_VERSION_FILE } from './fixtures/node-image.ts';
import { installIgnition, registriesConf, registryPort, setUpVmPivot, type VmPivotFixture } from './fixtures/pivot-setup.ts';
import { expectPivotedUnderNewPolicy, oomKills, PIVOT_DEADLINE_MS, phaseFacts, phaseTimes, pivotState, waitForPivotResult } from './fixtures/pivot-checks.ts';

// A module Debian builds that nothing in this VM loads at boot.
const MODULE = 'dummy';

let fx: VmPivotFixture;
let vm: Vm;
let bootToMultiUserSeconds = 0;

beforeAll(async () => {
  fx = await setUpVmPivot(['module']);
  vm = await bootVm({
    name: 'pivot-execmem', memoryMiB: 3072, allowReboot: true,
    forwards: [{ guestPort: 5000, hostPort: registryPort(fx.registry) }],
    provision: {
      ignition: [installIgnition(fx.workDir, { image: fx.guestRef('module') }, { generator: true })],
      files: [registriesConf()],
      selinuxBooleans: { allow_execmem: true },
    },
  });
});

afterAll(async () => {
  await vm?.dispose();
  await fx?.cleanup();
});

describe('vm: full pivot under enforcing, allow_execmem on (generator + isolate)', () => {
  it('pivots: loads the new policy, labels /usr and /etc with it, kubelet runs in its domain, no denials', async () => {
    const s = await waitForPivotResult(vm, ['done']);
    await vm.waitForUnit('multi-user.target', 'active', 600_000);
    bootToMultiUserSeconds = Number((await vm.sh("awk '{print $1}' /proc/uptime")).stdout.trim());
    const pull = phaseFacts(s, 'pull') as { staging?: { filesystem?: string }; stagingUsedBytes?: number; peakRssBytes?: number; expandedBytes?: number };
    process.stderr.write(`vm pivot (allow_execmem, 3 GiB): ${phaseTimes(s)}; staging ${pull.staging?.filesystem} ${((pull.stagingUsedBytes ?? 0) / 2 ** 20).toFixed(0)} MiB used, agent peak RSS ${((pull.peakRssBytes ?? 0) / 2 ** 20).toFixed(0)} MiB; multi-user.target after ${bootToMultiUserSeconds.toFixed(0)} s of uptime\n`);
    expect(s.phases?.map((p) => p.name)).toEqual(['preflight', 'resolve', 'pull', 'etc-plan', 'selinux', 'mount', 'etc-apply', 'refresh', 'isolate']);
    expect(phaseFacts(s, 'selinux')).toMatchObject({ policyLoaded: true });
    expect(pull.staging?.filesystem).toBe('own tmpfs');
    await expectPivotedUnderNewPolicy(vm);
    expect(await oomKills(vm)).toBe('');
  }, PIVOT_DEADLINE_MS + 900_000);

  it('modprobe loads a module from the booted kernel, while the node image carries another kernel\'s', async () => {
    const release = (await vm.sh('uname -r')).stdout.trim();
    expect(release).not.toBe(NODE_KERNEL);
    // The staged tree has only the node image's kernel; /usr shows the booted one's modules.
    expect((await vm.sh('ls /run/node-image-pivot/staging/*/usr/lib/modules/')).stdout.trim().split('\n')).toEqual([NODE_KERNEL]);
    expect((await vm.sh(`test -d /usr/lib/modules/${release}/kernel && echo present`)).stdout.trim()).toBe('present');
    expect((await vm.sh(`grep -c "^${MODULE} " /proc/modules || true`)).stdout.trim()).toBe('0');
    const r = await vm.exec(['modprobe', MODULE]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect((await vm.sh(`grep -c "^${MODULE} " /proc/modules`)).stdout.trim()).toBe('1');
  });

  it('after a reboot the live VM is back on the boot image, with nothing of the last boot, and pivots again', async () => {
    const first = await pivotState(vm);
    await vm.sh('echo gone-after-reboot > /var/lib/nip-reboot-marker');
    await vm.reboot();
    expect((await vm.sh('test -e /var/lib/nip-reboot-marker && echo kept || echo gone')).stdout.trim()).toBe('gone');
    expect((await vm.sh('getenforce')).stdout.trim()).toBe('Enforcing');
    const second = await waitForPivotResult(vm, ['done']);
    expect(second.bootId).not.toBe(first.bootId);
    expect(second.bootId?.replace(/-/g, '')).toBe(vm.bootId.replace(/-/g, ''));
    // This boot began on the boot image: its pivot kept the boot image's /usr at booted-usr.
    expect((await vm.sh(`test -e /run/node-image-pivot/booted-usr${NODE_VERSION_FILE.slice('/usr'.length)} && echo node || echo boot-image`)).stdout.trim()).toBe('boot-image');
    expect((await vm.sh(`cat ${NODE_VERSION_FILE}`)).stdout).toMatch(/^4\.20\.0-vm-module/);
    await vm.waitForUnit('multi-user.target', 'active', 600_000);
    process.stderr.write(`vm pivot after reboot: ${phaseTimes(second)}\n`);
  }, PIVOT_DEADLINE_MS + 1_200_000);
});
