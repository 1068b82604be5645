// Staging in RAM (issue 11, item 3.3) on the live VM, where / and /run are tmpfs: the agent's
// default stagingDir is under /run, which systemd and initramfs-tools size at 20% of RAM.
// - Too small: the same VM with /run shrunk below what the image needs (what a smaller RAM
//   gives) -> the space preflight refuses with the numbers (exit 9), before anything changes.
// - The OOM killer does not end the agent.
// (The "enough room" case, the pivot completing with its staging bytes and the agent's peak RSS,
// waits on the mount phase under enforcing: see the bed's report.)
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootVm, type Vm } from './helpers/vm.ts';
import { NODE_VERSION_FILE } from './fixtures/node-image.ts';
import { installIgnition, registriesConf, registryPort, setUpVmPivot, type VmPivotFixture } from './fixtures/pivot-setup.ts';

const MEMORY_MIB = 3072;
const AGENT = '/usr/local/bin/node-image-pivot';
// Runs argv as a child and prints its exit code and peak RSS (KiB) on the last line: the agent's
// own VmHWM is gone once it exits, and the guest has python3 (setools needs it).
const PEAK_RSS = 'import resource,subprocess,sys\nr=subprocess.run(sys.argv[1:])\nprint("exit", r.returncode, "maxrss_kib", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)';

interface State { result?: string; error?: { line: string; exitCode: number }; phases?: Array<{ name: string; facts?: Record<string, unknown> }> }

async function state(vm: Vm): Promise<State> {
  return JSON.parse((await vm.sh('cat /run/node-image-pivot/state.json 2>/dev/null || echo "{}"')).stdout) as State;
}

async function runAgent(vm: Vm): Promise<{ exit: number; maxRssKiB: number; stderr: string }> {
  const r = await vm.exec(['python3', '-c', PEAK_RSS, AGENT, 'run', '--no-isolate'], { timeoutMs: 1_500_000 });
  const m = /exit (-?\d+) maxrss_kib (\d+)\n$/.exec(r.stdout);
  expect(m, `${r.stdout}\n${r.stderr}`).not.toBeNull();
  return { exit: Number(m![1]), maxRssKiB: Number(m![2]), stderr: r.stderr };
}

async function oomKills(vm: Vm): Promise<string> {
  return (await vm.sh('journalctl -k -q --no-pager -g "Out of memory|oom-kill|Killed process" || true')).stdout.trim();
}

let fx: VmPivotFixture;
let vm: Vm;

beforeAll(async () => {
  fx = await setUpVmPivot(['module']);
  vm = await bootVm({
    name: 'ram', memoryMiB: MEMORY_MIB,
    forwards: [{ guestPort: 5000, hostPort: registryPort(fx.registry) }],
    provision: {
      // Service mode without its unit enabled: nothing pivots until the test runs the agent.
      ignition: [{ ...installIgnition(fx.workDir, { image: fx.guestRef('module') }, { generator: false }), systemd: { units: [] } }],
      files: [registriesConf()],
      selinuxBooleans: { allow_execmem: true },
    },
  });
  await vm.waitForUnit('multi-user.target', 'active', 600_000);
});

afterAll(async () => {
  await vm?.dispose();
  await fx?.cleanup();
});

describe('vm: staging in RAM', () => {
  it('/run is a tmpfs capped at 20% of RAM, where the default stagingDir lives', async () => {
    const [size, total] = (await vm.sh("findmnt -n -b -o SIZE /run; awk '/MemTotal/ {print $2 * 1024}' /proc/meminfo")).stdout.trim().split('\n').map(Number);
    expect(size! / total!).toBeGreaterThan(0.19);
    expect(size! / total!).toBeLessThan(0.21);
    process.stderr.write(`vm ram: MemTotal ${(total! / 2 ** 20).toFixed(0)} MiB, /run ${(size! / 2 ** 20).toFixed(0)} MiB\n`);
  });

  it('with too little room for the image, the preflight refuses with the numbers before anything changes', async () => {
    await vm.sh('mount -o remount,size=48M /run');
    try {
      const r = await runAgent(vm);
      expect(r.exit, r.stderr).toBe(9);
      const s = await state(vm);
      expect(s.result).toBe('failed');
      expect(s.error?.line).toMatch(/staging needs \d+(\.\d+)? MiB \(\d+(\.\d+)? MiB compressed x spaceFactor 3\) but only \d+(\.\d+)? MiB is free/);
      process.stderr.write(`vm ram: refused: ${s.error?.line}; agent peak RSS ${(r.maxRssKiB / 1024).toFixed(0)} MiB\n`);
      expect((await vm.sh(`test -e ${NODE_VERSION_FILE} && echo new || echo old; ls -A /run/node-image-pivot/staging 2>/dev/null | wc -l`)).stdout).toBe('old\n0\n');
      expect(await oomKills(vm)).toBe('');
    } finally {
      await vm.sh('mount -o remount,size=20% /run');
    }
  });
});
