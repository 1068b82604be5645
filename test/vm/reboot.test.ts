// A reboot of the live VM (issue 11, item 3.5, the bed's half): everything the last boot wrote
// lived in RAM, so the VM comes back on the boot image as provisioned, with a new boot id, and
// the bed keeps talking to it. (Pivoting again after the reboot: modules-reboot, see the report.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootVm, type Vm } from './helpers/vm.ts';

let vm: Vm;

beforeAll(async () => {
  vm = await bootVm({
    name: 'reboot', memoryMiB: 1536, allowReboot: true,
    provision: { files: [{ path: '/etc/nip-provisioned', contents: 'from the provisioning layer\n' }] },
  });
  await vm.waitForUnit('multi-user.target', 'active');
});

afterAll(async () => {
  await vm?.dispose();
});

describe('vm: reboot', () => {
  it('comes back on the boot image: what the last boot wrote is gone, what was provisioned is there', async () => {
    const before = vm.bootId;
    const write = await vm.sh('echo x > /etc/nip-written && echo x > /var/lib/nip-written && echo changed > /etc/nip-provisioned && cat /etc/nip-provisioned');
    expect(write.stdout).toBe('changed\n');
    await vm.reboot();
    expect(vm.bootId).not.toBe(before);
    expect((await vm.sh('cat /proc/sys/kernel/random/boot_id')).stdout.trim()).toBe(vm.bootId);
    expect((await vm.sh('ls /etc/nip-written /var/lib/nip-written 2>/dev/null; cat /etc/nip-provisioned')).stdout).toBe('from the provisioning layer\n');
    expect((await vm.sh('getenforce')).stdout.trim()).toBe('Enforcing');
    await vm.waitForUnit('multi-user.target', 'active');
  });
});
