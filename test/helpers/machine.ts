// Real systemd for tests: a systemd-nspawn machine booted from the test bed's cached Debian 12
// rootfs (CoreOS-shaped: /usr/local -> ../var/usrlocal, pristine /etc in /usr/etc). Needs root
// and scripts/testbed/install-deps.sh. See scripts/testbed/machine.ts for the layout.
//
//   const m = await bootMachine({
//     bootUnit: 'node-image-pivot.target',                  // systemd.unit= (default: default.target)
//     binds: [{ host: registryDir, guest: '/srv', ro: true }],
//     prepare: async (root) => { writeFileSync(`${root}/etc/node-image-pivot/config.json`, ...) },
//   });
//   await m.waitForSystemState(['running', 'degraded']);
//   const r = await m.exec(['node-image-pivot', 'status', '--json']);   // under the guest's systemd
//   r.stdout, r.stderr, r.exitCode                                      // never throws on exit != 0
//   await m.waitForUnit('kubelet.service', 'active');
//   const log = await m.journal('node-image-pivot.service');           // text, short-monotonic
//   await m.poweroff();     // clean SIGRTMIN+4; SIGTERM/SIGKILL of nspawn as last resort; unmounts
//   await m.journal();      // still readable after poweroff (from the upper layer)
//   await m.dispose();      // poweroff if needed, then removes the machine's temp dir
//
// Facts worth knowing:
// - Boot to multi-user takes about 0.3 s; the first call in a fresh clone builds the rootfs
//   (about 20 s, once, under a lock shared by all test processes) into .cache/testbed/.
// - The agent binary dist/node-image-pivot (run `npm run build`) is bound read-only at
//   /var/usrlocal/bin/node-image-pivot, so /usr/local/bin/node-image-pivot finds it and it stays
//   visible after /usr is swapped. Pass `agentBinary: null` for none, or a path for another.
// - The guest shares the host's network (a loopback registry is reachable at 127.0.0.1).
//   sshd listens on 127.0.0.1:`m.sshPort`, unique per machine.
// - `m.root` is the guest's / (an overlay mount, only while running); `m.upper` is its upper
//   layer (what the guest changed); `m.resultsDir` is bound at /results.
// - `exec(cmd, { direct: true })` uses plain nsenter (host capabilities, no unit) - for
//   inspection; the default runs `systemd-run --wait --pipe` in the guest, the way services run.
export {
  bootMachine,
  Machine,
  mountsUnder,
  processAlive,
  type Bind,
  type BootOptions,
  type ExecOptions,
  type ExecResult,
  type UnitState,
} from '../../scripts/testbed/machine.ts';
export { ensureRootfs, rootfsPaths, RECIPE } from '../../scripts/testbed/rootfs.ts';
