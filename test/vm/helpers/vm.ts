// qemu VMs for tests: Debian 12's own kernel under TCG, Debian's refpolicy enforcing, a root
// shaped like a CoreOS live ISO (squashfs lower, tmpfs upper: everything written lives in RAM;
// /usr read-only; pristine /etc in /usr/etc; /usr/local -> ../var/usrlocal). Needs root and
// scripts/testbed/install-deps.sh. Layout and facts: scripts/testbed/vm/README.md.
//
//   const vm = await bootVm({
//     memoryMiB: 2048,
//     kernelArgs: ['systemd.unit=node-image-pivot.target'],
//     forwards: [{ guestPort: 5000, hostPort: registry.port }],   // guest 10.0.2.100:5000 -> host 127.0.0.1
//     provision: {                                             // applied the Ignition way, before PID 1
//       ignition: [doc],                                       // e.g. `node-image-pivot ignition --embed`
//       files: [{ path: '/etc/containers/registries.conf', contents: '...' }],
//       selinuxBooleans: { allow_execmem: true },              // set early in boot, not persistent
//     },
//   });
//   await vm.waitForUnit('multi-user.target', 'active');
//   const r = await vm.exec(['id', '-Z']);                  // systemd-run --wait in the guest (PID 1 opens the stdio files)
//   r.stdout, r.stderr, r.exitCode                          // never throws on exit != 0
//   await vm.sh('getenforce');                              // bash -c in the agent (initrc_t, no unit; stdio are pipes)
//   await vm.journal('node-image-pivot.service');          // short-monotonic text
//   await vm.audit();                                       // AVC / SELINUX_ERR lines
//   await vm.reboot();                                      // needs allowReboot: true
//   await vm.poweroff();    // collects journal + audit first, then systemctl poweroff; kills qemu by PID if needed
//   await vm.journal(); await vm.audit();                   // still readable after poweroff
//   await vm.dispose();     // poweroff if needed, removes the VM's dir (NODE_IMAGE_PIVOT_KEEP_VM=1 keeps it)
//
// Facts worth knowing:
// - The first call builds the image (minutes, once, under a lock) into the test bed cache.
// - Nothing waits on time: boot waits for the guest agent's answer (deadline 10 min), units
//   for their state. Under TCG on a loaded host a boot takes 30 s to several minutes.
// - The network is qemu's user mode with restrict=on: only the forwards reach the host, no DNS;
//   use GUEST_FORWARD_HOST (10.0.2.100) literally in image references and registries.conf.
// - The test project's setup file (teardown.ts) disposes whatever a test file left running.
export { bootVm, disposeAllVms, GUEST_FORWARD_HOST, Vm, type ExecResult, type Forward, type UnitState, type VmBootOptions, type VmExecOptions } from '../../../scripts/testbed/vm/machine.ts';
export { ensureVmImage, labelTree, packSquashfs, vmImagePaths, VM_RECIPE, type VmImage } from '../../../scripts/testbed/vm/image.ts';
export type { Provision, ProvisionFile } from '../../../scripts/testbed/vm/provision.ts';
