// Debian's default refpolicy denies execmem to the service domain (initrc_t), and V8 needs it
// before any JavaScript runs (issue 11, item 4). The node must never be parked without a
// readable cause: the unit's ExecStopPost names the cause and the fix in one line, the node
// waits in the pivot target, and once the boolean is on the unit's own retries finish the pivot.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../helpers/wait.ts';
import { bootVm, type Vm } from './helpers/vm.ts';
import { installIgnition, quickRestart, registriesConf, registryPort, setUpVmPivot, type VmPivotFixture } from './fixtures/pivot-setup.ts';
import { AGENT, expectPivotedUnderNewPolicy, PIVOT_DEADLINE_MS, phaseTimes, waitForPivotResult } from './fixtures/pivot-checks.ts';

const CAUSE = /node-image-pivot: the agent died at start/;

let fx: VmPivotFixture;
let vm: Vm;

beforeAll(async () => {
  fx = await setUpVmPivot(['module']);
  vm = await bootVm({
    name: 'pivot-default', memoryMiB: 3072,
    forwards: [{ guestPort: 5000, hostPort: registryPort(fx.registry) }],
    provision: {
      ignition: [installIgnition(fx.workDir, { image: fx.guestRef('module') }, { generator: true })],
      files: [registriesConf(), quickRestart('node-image-pivot.service')],
    },
  });
});

afterAll(async () => {
  await vm?.dispose();
  await fx?.cleanup();
});

describe('vm: Debian\'s default policy, execmem denied (generator + isolate)', () => {
  it('the node waits in the pivot target with a one-line cause and fix, and pivots once execmem is allowed', async () => {
    const journal = await waitFor(async () => {
      const text = await vm.journal('node-image-pivot.service');
      return CAUSE.test(text) ? text : undefined;
    }, 'the cause line in the unit\'s journal', { timeoutMs: 900_000, intervalMs: 3000 });
    const line = journal.split('\n').find((l) => CAUSE.test(l));
    process.stderr.write(`vm pivot (default policy): cause line: ${line}\n`);
    expect(line).toMatch(/SELinux denies its domain system_u:system_r:initrc_t:s0 execmem.*Fix: setsebool -P allow_execmem on/);
    // Parked: multi-user.target is not reached, and the unit keeps retrying by itself (its
    // restarts are unlimited: it is starting, in its ExecStopPost, or waiting to restart; never
    // failed, never done).
    const parked = await vm.sh('systemctl is-active multi-user.target; systemctl show -P ActiveState node-image-pivot.service; true');
    const [multiUser, agent] = parked.stdout.trim().split('\n');
    expect(multiUser).toBe('inactive');
    expect(['activating', 'deactivating']).toContain(agent);
    // What the operator's `status` does under this policy, from a service like the agent's.
    const status = await vm.exec([AGENT, 'status']);
    const jitless = await vm.exec([AGENT, 'status'], { env: { NODE_OPTIONS: '--jitless' } });
    process.stderr.write(`vm pivot (default policy): status exit=${status.exitCode} stderr=${JSON.stringify(status.stderr.slice(0, 200))}; NODE_OPTIONS=--jitless status exit=${jitless.exitCode} stdout=${JSON.stringify(jitless.stdout.slice(0, 200))}\n`);
    // The operator's way to read the state meanwhile, as the cause line says: V8 without its JIT.
    expect(line).toMatch(/until then NODE_OPTIONS=--jitless node-image-pivot status works/);
    expect(jitless.exitCode, jitless.stderr).toBe(0);
    // Between attempts the unit is activating (starting, or waiting to restart) or deactivating
    // (its ExecStopPost printing the cause line): either way retrying, never failed.
    expect(jitless.stdout).toMatch(/node-image-pivot\.service (activating|deactivating)/);
    expect((await vm.sh('setsebool allow_execmem 1 && getsebool allow_execmem')).stdout.trim()).toBe('allow_execmem --> on');
    const s = await waitForPivotResult(vm, ['done']);
    process.stderr.write(`vm pivot (default policy, then execmem allowed): ${phaseTimes(s)}\n`);
    await vm.waitForUnit('multi-user.target', 'active', 600_000);
    await expectPivotedUnderNewPolicy(vm, { allowExecmem: true });
  }, PIVOT_DEADLINE_MS + 1_200_000);
});
