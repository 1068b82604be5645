// Delta staging under enforcing (issue 14, the VM case), on one live VM and two boots. The first
// sizes stagingReserveMiB in the guest so that RAM offers staging twice the compressed image:
// `staging: "full"` (which needs three times it) is refused by the space preflight with the
// numbers, all old, and `staging: "auto"` (delta: the root is in RAM) pivots within the same
// reserve. The reboot brings
// the VM back on the boot image, and the second pivots with the bed's `staging: "full"`. /usr
// after each must be the same tree, down to every xattr including security.selinux
// (fixtures/usr-digest.py). On each boot, new ELFs of the node image (in a delta: the overlay's
// top layer, whose files overlayfs opens with the mounter's credentials) run from confined
// domains: the kubelet stand-in's nipkubelet_t, systemd_networkd_t (base policy, may use
// initrc_t's fds) and chkpwd_t (base policy, may use init_t's fds but not initrc_t's, so PID 1
// mounts the overlay).
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootVm, type Vm } from './helpers/vm.ts';
import { KUBELET_MARKER, NEW_CHKPWD_ELF, NEW_ELF, NODE_VERSION_FILE } from './fixtures/node-image.ts';
import { installIgnition, registriesConf, registryPort, setUpVmPivot, type VmPivotFixture } from './fixtures/pivot-setup.ts';
import {
  AGENT, expectAllOld, expectPivotedUnderNewPolicy, oomKills, PIVOT_DEADLINE_MS, phaseFacts, phaseTimes, pivotState, uptimeSeconds,
} from './fixtures/pivot-checks.ts';

const DIGEST_SCRIPT = readFileSync(join(import.meta.dirname, 'fixtures/usr-digest.py'), 'utf8');
const AUTO_CONFIG = '/etc/nip-vm/auto.json';
const FULL_RESERVED_CONFIG = '/etc/nip-vm/full-reserved.json';
const MIB = 2 ** 20;
const mib = (n: number): string => `${(n / MIB).toFixed(0)} MiB`;
/** Denials of the ELFs' runs: by their names or by the confined domains they ran in. */
const ELF_DENIAL = /comm="(nip-true|unix_verify|kubelet)"|scontext=\S*:(chkpwd_t|systemd_networkd_t|nipkubelet_t):/;

let fx: VmPivotFixture;
let vm: Vm;
let deltaListing = '';
let reserveMiB = 0;
let firstRun = Infinity;
/** The delta pivot's mount facts: who mounted the overlay. */
let overlayMounter: unknown;

interface ElfRuns { kubelet: string; networkd: number; chkpwd: number; denials: string[]; harness: string[] }
/** vm.exec's stdio files (var_lib_t) that a confined domain may not read or append: the bed's, not the pivot's. */
const HARNESS_STDIO = /path="\/var\/lib\/nip-vm-agent\/req\.[^/"]+\/std(in|out|err)"/;
let deltaRuns: ElfRuns | undefined;

interface PullFacts { stagingMode: string; stagingModeReason: string; stagingUsedBytes: number; peakRssBytes: number; compressedBytes: number; expandedBytes: number; delta?: unknown }

async function pivot(args: string[]): Promise<PullFacts & { log: string }> {
  const r = await vm.exec([AGENT, 'run', '--no-isolate', ...args], { timeoutMs: PIVOT_DEADLINE_MS });
  const s = await pivotState(vm);
  expect(r.exitCode, `${r.stderr.split('\n').slice(-30).join('\n')}\n${JSON.stringify(s).slice(0, 1500)}`).toBe(0);
  const pull = phaseFacts(s, 'pull') as unknown as PullFacts;
  process.stderr.write(`vm delta-oracle: ${phaseTimes(s)}; staging ${pull.stagingMode} (${pull.stagingModeReason}), ${mib(pull.stagingUsedBytes)} used `
    + `(${mib(pull.compressedBytes)} compressed, ${mib(pull.expandedBytes)} expanded), agent peak RSS ${mib(pull.peakRssBytes)}${pull.delta ? `, delta ${JSON.stringify(pull.delta)}` : ''}\n`);
  expect((await vm.sh(`cat ${NODE_VERSION_FILE}`)).stdout).toMatch(/^4\.20\.0-vm-module/);
  return { ...pull, log: `${r.stdout}\n${r.stderr}` };
}

/** The image's compressed size as the agent counts it: the manifest's layer sizes. */
function layoutCompressedBytes(layoutDir: string, manifestDigest: string): number {
  const manifest = JSON.parse(readFileSync(join(layoutDir, 'blobs/sha256', manifestDigest.replace(/^sha256:/, '')), 'utf8')) as { layers: Array<{ size: number }> };
  return manifest.layers.reduce((sum, l) => sum + l.size, 0);
}

async function writeConfig(path: string, config: Record<string, unknown>): Promise<void> {
  const r = await vm.sh(`cat > ${path}.tmp && mv ${path}.tmp ${path} && restorecon ${path} && cat ${path}`, { input: JSON.stringify(config) });
  expect(JSON.parse(r.stdout), r.stderr).toEqual(config);
}

/** The digest listing of the guest's /usr (fixtures/usr-digest.py), fetched compressed. */
async function usrListing(): Promise<string> {
  const t0 = performance.now();
  const w = await vm.sh('python3 - /usr > /run/nip-usr.list', { input: DIGEST_SCRIPT, timeoutMs: 1_500_000 });
  expect(w.exitCode, w.stderr).toBe(0);
  const r = await vm.sh('gzip -c /run/nip-usr.list | base64 -w0', { timeoutMs: 300_000 });
  const text = gunzipSync(Buffer.from(r.stdout.trim(), 'base64')).toString('utf8');
  process.stderr.write(`vm delta-oracle: /usr listing of ${text.split('\n').length - 1} paths in ${((performance.now() - t0) / 1000).toFixed(0)} s\n`);
  return text;
}

/** Runs the node image's new ELFs from the confined domains; the denials they added. */
async function runElfs(): Promise<ElfRuns> {
  const before = new Set(await vm.audit());
  const k = await vm.exec(['systemctl', 'start', 'kubelet.service'], { timeoutMs: 600_000 });
  expect(k.exitCode, k.stderr).toBe(0);
  const kubelet = (await vm.sh(`cat ${KUBELET_MARKER}.elf ${KUBELET_MARKER} | tr -d '\\0'`)).stdout.trim().replace(/\n/g, ' ');
  const networkd = (await vm.exec([NEW_ELF], { properties: ['SELinuxContext=system_u:system_r:systemd_networkd_t:s0'] })).exitCode;
  // PID 1 (init_t) executing a chkpwd_exec_t file transitions to chkpwd_t by the policy's rule.
  const chkpwd = (await vm.exec([NEW_CHKPWD_ELF])).exitCode;
  const added = (await vm.audit()).filter((l) => !before.has(l) && /avc:\s+denied/.test(l) && ELF_DENIAL.test(l));
  return { kubelet, networkd, chkpwd, denials: added.filter((l) => !HARNESS_STDIO.test(l)), harness: added.filter((l) => HARNESS_STDIO.test(l)) };
}

function report(mode: string, r: ElfRuns): void {
  process.stderr.write(`vm delta-oracle (${mode}): kubelet stand-in ran ${NEW_ELF}: exit+context ${r.kubelet}; systemd_networkd_t ${NEW_ELF}: exit ${r.networkd}; `
    + `chkpwd_t ${NEW_CHKPWD_ELF}: exit ${r.chkpwd}; denials:${r.denials.length ? `\n  ${r.denials.join('\n  ')}` : ' none'}\n`
    + `  (and ${r.harness.length} of vm.exec's stdio files, not counted)\n`);
}

beforeAll(async () => {
  fx = await setUpVmPivot(['module']);
  vm = await bootVm({
    name: 'delta-oracle', memoryMiB: 3072, allowReboot: true,
    forwards: [{ guestPort: 5000, hostPort: registryPort(fx.registry) }],
    provision: {
      // Service mode without its unit enabled: each boot pivots when the test runs the agent.
      // The installed config is the bed's (full); the delta boot names the auto one.
      ignition: [{ ...installIgnition(fx.workDir, { image: fx.guestRef('module') }, { generator: false }), systemd: { units: [] } }],
      files: [registriesConf(), { path: AUTO_CONFIG, contents: JSON.stringify({ image: fx.guestRef('module') }) }],
      selinuxBooleans: { allow_execmem: true },
    },
  });
  await vm.waitForUnit('multi-user.target', 'active', 600_000);
});

afterAll(async () => {
  await vm?.dispose();
  await fx?.cleanup();
});

describe('vm: delta staging where RAM cannot hold the full image; a delta /usr equals a full one under enforcing, and its new ELFs run from confined domains', () => {
  it('boot 1: staging "full" is refused by the space preflight with the numbers, all old', async () => {
    const compressed = layoutCompressedBytes(join(fx.workDir, 'layout-module'), fx.images.module.manifestDigest);
    const avail = Number((await vm.sh("awk '/MemAvailable/ {print $2 * 1024}' /proc/meminfo")).stdout.trim());
    // RAM offers staging twice the compressed image: delta's least need fits, full's (x3) does not.
    reserveMiB = Math.floor((avail - 2 * compressed) / MIB);
    expect(reserveMiB, `MemAvailable ${mib(avail)} leaves no reserve above 2 x ${mib(compressed)}`).toBeGreaterThan(128);
    process.stderr.write(`vm delta-oracle: MemAvailable ${mib(avail)}, image ${mib(compressed)} compressed, stagingReserveMiB ${reserveMiB}\n`);
    await writeConfig(FULL_RESERVED_CONFIG, { image: fx.guestRef('module'), staging: 'full', stagingReserveMiB: reserveMiB });
    await writeConfig(AUTO_CONFIG, { image: fx.guestRef('module'), stagingReserveMiB: reserveMiB });
    firstRun = await uptimeSeconds(vm);
    const r = await vm.exec([AGENT, 'run', '--no-isolate', '--config', FULL_RESERVED_CONFIG], { timeoutMs: PIVOT_DEADLINE_MS });
    expect(r.exitCode, r.stderr).toBe(9);
    const s = await pivotState(vm);
    expect(s.result).toBe('failed');
    expect(s.error?.line).toMatch(/staging needs \d+ MiB \(\d+ MiB compressed x spaceFactor 3\) but only \d+ MiB is free in RAM .*Fix: give the node more RAM/);
    process.stderr.write(`vm delta-oracle: full refused: ${s.error?.line}\n`);
    expect((await vm.sh('ls -A /run/node-image-pivot/staging | wc -l')).stdout).toBe('0\n');
    await expectAllOld(vm);
  }, PIVOT_DEADLINE_MS);

  it('boot 1: "auto" stages a delta (no fallback) within the same reserve and mounts the overlay; /usr is listed', async () => {
    const m = await pivot(['--config', AUTO_CONFIG]);
    expect(m.stagingMode).toBe('delta');
    expect(m.stagingModeReason).toMatch(/^staging "auto": the root lives in RAM \(/);
    expect(m.stagingModeReason).not.toMatch(/falling back/);
    // The log line (JSON on stderr, so its quotes are escaped).
    expect(m.log).toMatch(/staging: delta \(staging \\"auto\\": the root lives in RAM/);
    expect(m.stagingUsedBytes).toBeLessThan(m.expandedBytes / 4);
    const usr = (await vm.sh('findmnt -n -o FSTYPE,OPTIONS /usr | tail -n 1')).stdout.trim();
    expect(usr).toMatch(/^overlay .*lowerdir=.*\/usr:\/run\/node-image-pivot\/booted-usr/);
    expect(usr.split(/[ ,]/)).toContain('ro');
    overlayMounter = (phaseFacts(await pivotState(vm), 'mount') as { overlayMounter?: unknown }).overlayMounter;
    deltaListing = await usrListing();
    expect(deltaListing).toMatch(/^\/bin\/nip-true\t.*security\.selinux=/m);
  }, PIVOT_DEADLINE_MS + 1_500_000);

  it('boot 1 (delta): the new ELF runs from nipkubelet_t and systemd_networkd_t (both may use initrc_t\'s fds)', async () => {
    deltaRuns = await runElfs();
    report('delta', deltaRuns);
    expect(deltaRuns.kubelet).toBe('0 system_u:system_r:nipkubelet_t:s0');
    expect(deltaRuns.networkd).toBe(0);
    expect(deltaRuns.denials).toEqual([]);
    await expectPivotedUnderNewPolicy(vm, { isolated: false, sinceSeconds: firstRun });
    expect(await oomKills(vm)).toBe('');
  }, 2_100_000);

  // On Linux 6.1 an mmap'd overlay file's vma maps the top layer's real file, opened by
  // overlayfs with the mounter's credentials; ld.so's RELRO mprotect is then checked as `fd use`
  // on the mounter's domain. chkpwd_t may use init_t's fds but not the agent's (initrc_t), so
  // the pivot has PID 1 mount the overlay (src/mount-ops.ts OverlayMounter).
  it('boot 1 (delta): PID 1 mounted the overlay, and chkpwd_t runs a new ELF of the delta', () => {
    expect(overlayMounter).toBe('system_u:system_r:init_t:s0');
    expect(deltaRuns).toBeDefined();
    expect(deltaRuns!.chkpwd).toBe(0);
    expect(deltaRuns!.denials).toEqual([]);
  });

  // Why PID 1 mounts it: who mounts the overlay decides whose fds a confined process must be
  // allowed to use. The delta's top again, as a second overlay mounted once by PID 1's own
  // domain (init_t, which SELinuxContext= keeps: an exec into the current domain needs no
  // transition) and once the way the agent would (its own domain, initrc_t); chkpwd_t runs the
  // new ELF through each.
  it('the same delta mounted by init_t (PID 1\'s domain) runs the ELF from chkpwd_t; mounted by initrc_t it does not', async () => {
    const top = (await vm.sh("findmnt -n -o OPTIONS /usr | tail -n 1 | tr ',' '\\n' | sed -n 's/^lowerdir=\\([^:]*\\):.*/\\1/p'")).stdout.trim();
    expect(top).toMatch(/^\/run\/node-image-pivot\/staging\/.*\/usr$/);
    const opts = `ro,lowerdir=${top}:/run/node-image-pivot/booted-usr`;
    // Below /var: /run is noexec.
    expect((await vm.sh('mkdir -p /var/lib/nip-exp/init /var/lib/nip-exp/agent')).exitCode).toBe(0);
    const before = new Set(await vm.audit());
    const byInit = await vm.exec(['mount', '-t', 'overlay', '-o', opts, 'overlay', '/var/lib/nip-exp/init'], { properties: ['SELinuxContext=system_u:system_r:init_t:s0'] });
    const byAgent = await vm.sh(`runcon "$(tr -d '\\0' < /proc/self/attr/current)" mount -t overlay -o ${opts} overlay /var/lib/nip-exp/agent`);
    const viaInit = (await vm.exec([`/var/lib/nip-exp/init${NEW_CHKPWD_ELF.slice('/usr'.length)}`])).exitCode;
    const viaAgent = (await vm.exec([`/var/lib/nip-exp/agent${NEW_CHKPWD_ELF.slice('/usr'.length)}`])).exitCode;
    const denials = (await vm.audit()).filter((l) => !before.has(l) && /avc:\s+denied/.test(l) && !HARNESS_STDIO.test(l));
    process.stderr.write(`vm delta-oracle experiment: mount as init_t exit ${byInit.exitCode} ${byInit.stderr.trim()}; as the agent exit ${byAgent.exitCode} ${byAgent.stderr.trim()}; `
      + `chkpwd_t ${NEW_CHKPWD_ELF} via init_t's overlay exit ${viaInit}, via the agent's exit ${viaAgent}; denials:${denials.length ? `\n  ${denials.join('\n  ')}` : ' none'}\n`);
    await vm.sh('umount /var/lib/nip-exp/init /var/lib/nip-exp/agent');
    expect(byInit.exitCode).toBe(0);
    expect(viaInit).toBe(0);
    expect(byAgent.exitCode).toBe(0);
    // ld.so gives up on the RELRO mprotect (exit 127 in one run, 1 through this second mount in another)
    expect(viaAgent).not.toBe(0);
    expect(denials).toEqual([expect.stringMatching(/denied\s+\{ use \} .*path="\/var\/lib\/nip-exp\/agent\/sbin\/unix_verify" .*scontext=\S*:chkpwd_t:s0 tcontext=\S*:initrc_t:s0 tclass=fd/)]);
  }, 900_000);

  it('boot 2: the bed\'s "full" pivots the same image, and /usr is the same tree, labels included', async () => {
    expect(deltaListing).not.toBe('');
    await vm.reboot();
    expect((await vm.sh('getenforce')).stdout.trim()).toBe('Enforcing');
    const m = await pivot([]);
    expect(m.stagingMode).toBe('full');
    expect((await vm.sh('findmnt -n -o FSTYPE /usr | tail -n 1')).stdout.trim()).not.toBe('overlay');
    const fullListing = await usrListing();
    if (fullListing !== deltaListing) {
      const a = new Set(deltaListing.split('\n'));
      const b = new Set(fullListing.split('\n'));
      const onlyDelta = [...a].filter((l) => !b.has(l));
      const onlyFull = [...b].filter((l) => !a.has(l));
      writeFileSync(join(fx.workDir, '..', `nip-usr-delta-${process.pid}.list`), deltaListing);
      writeFileSync(join(fx.workDir, '..', `nip-usr-full-${process.pid}.list`), fullListing);
      process.stderr.write(`vm delta-oracle: listings differ: ${onlyDelta.length} lines only in delta, ${onlyFull.length} only in full; first:\n`
        + `  delta: ${onlyDelta.slice(0, 15).join('\n  delta: ')}\n  full:  ${onlyFull.slice(0, 15).join('\n  full:  ')}\n`);
    }
    expect(fullListing.split('\n').length).toBe(deltaListing.split('\n').length);
    expect(fullListing === deltaListing, 'the /usr listings after delta and after full differ (see the test log)').toBe(true);
    expect(await oomKills(vm)).toBe('');
  }, PIVOT_DEADLINE_MS + 2_400_000);

  it('boot 2 (full, the control): the same ELFs from the same domains', async () => {
    const r = await runElfs();
    report('full', r);
    expect(r.kubelet).toBe('0 system_u:system_r:nipkubelet_t:s0');
    expect(r.networkd).toBe(0);
    expect(r.chkpwd).toBe(0);
    expect(r.denials).toEqual([]);
  }, 900_000);
});
