// Faults in a whole `run` on real systemd: kill -9 at every phase and at the riskiest steps,
// SIGTERM during a harmless, a critical and a late phase, and a unit that makes the isolate job
// fail. Each case checks what the node looks like afterwards, and that a rerun converges on
// exactly the /etc and /usr a clean pivot produces.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { recordRow } from '../faults/table.ts';
import { bootMachine, type Machine } from '../../scripts/testbed/machine.ts';
import { NODE_VERSION_FILE } from '../helpers/node-image.ts';
import { LOCAL_MOTD, installInto, setUpPivotFixture, type PivotFixture } from './pivot-fixture.ts';
import { waitFor } from '../helpers/wait.ts';

const AGENT = '/usr/local/bin/node-image-pivot';
let fx: PivotFixture;
/** /etc after a clean pivot: path, type, mode, owner, link target and content hash. */
let mergedEtc: string;
let bootEtc: string;
/** The same two without the user databases, for states between the merge and the refresh. */
let mergedEtcFiles: string;
let bootEtcFiles: string;

/**
 * A fingerprint of /etc: every path with type, mode, owner and link target, and every file's
 * md5. Left out: what changes per boot or per machine (machine-id, the test bed's per-machine
 * sshd port, host keys) and what systemd-sysusers backs up (passwd-, shadow-...), none of which
 * is the merge's doing.
 */
const VOLATILE = ['*-', '.pwd.lock', 'machine-id', 'resolv.conf', 'ld.so.cache', 'ssh_host_*', '10-testbed.conf'];
/** The user databases change in the refresh phase (systemd-sysusers), not in the merge. */
const USER_DBS = ['passwd', 'group', 'shadow', 'gshadow', 'subuid', 'subgid'];
function fingerprintScript(skip: string[]): string {
  const prune = skip.map((n) => `-name '${n}'`).join(' -o ');
  return `cd /etc && find . -xdev \\( ${prune} \\) -prune -o -printf '%p %y %m %U %G %l\\n' | sort; `
    + `find . -xdev \\( ${prune} \\) -prune -o -type f -print0 | sort -z | xargs -0 md5sum`;
}
const ETC_FINGERPRINT = fingerprintScript(VOLATILE);
const ETC_MERGE_FINGERPRINT = fingerprintScript([...VOLATILE, ...USER_DBS]);

async function sh(m: Machine, script: string): Promise<string> {
  return (await m.exec(['sh', '-c', script], { direct: true })).stdout;
}

async function serviceMachine(name: string, extra: Parameters<typeof installInto>[1]['files'] = {}): Promise<Machine> {
  const m = await bootMachine({
    name, bootUnit: 'multi-user.target',
    prepare: (root) => installInto(root, { image: fx.image.ref, registryHost: fx.registry.host, generator: false, files: extra }),
  });
  await m.waitForSystemState(['running', 'degraded']);
  return m;
}

/** Every mount below the state directory: after any run, only the booted-usr bind, once, read-only. */
async function ownMounts(m: Machine): Promise<string> {
  return sh(m, `awk '$5 ~ "^/run/node-image-pivot/" { print $5, substr($6, 1, 2) }' /proc/self/mountinfo`);
}
// After a pivot the agent's own mounts are exactly two: the staging tmpfs (staging on /run, a
// tmpfs, gets one of its own; it holds the new /usr) and the read-only booted-usr bind.
const ONLY_BOOTED_USR = '/run/node-image-pivot/staging rw\n/run/node-image-pivot/booted-usr ro\n';

async function usrIs(m: Machine): Promise<'old' | 'new'> {
  return (await sh(m, `test -e ${NODE_VERSION_FILE} && echo new || echo old`)).trim() as 'old' | 'new';
}

beforeAll(async () => {
  fx = await setUpPivotFixture();
  // The reference: a clean pivot, and the /etc it ends with.
  const m = await serviceMachine('faults-ref');
  try {
    bootEtc = await sh(m, ETC_FINGERPRINT);
    bootEtcFiles = await sh(m, ETC_MERGE_FINGERPRINT);
    const r = await m.exec([AGENT, 'run', '--no-isolate']);
    expect(r.exitCode, r.stderr).toBe(0);
    mergedEtc = await sh(m, ETC_FINGERPRINT);
    mergedEtcFiles = await sh(m, ETC_MERGE_FINGERPRINT);
    expect(mergedEtc).not.toBe(bootEtc);
  } finally {
    await m.dispose();
  }
});

afterAll(async () => {
  await fx?.cleanup();
});

// Each case is also a row of `npm run test:faults -- --e2e`'s table (docs/reliability.md).
let caseStarted = 0;
beforeEach(() => {
  caseStarted = Date.now();
});
afterEach(({ task }) => {
  const errors = task.result?.errors ?? [];
  recordRow({
    category: 'pivot (nspawn)',
    case: `${task.suite?.name ?? ''}: ${task.name}`,
    expected: 'as the case name says; rerun converges where it says so',
    observed: errors.length ? `FAILED: ${String(errors[0]?.message ?? '').slice(0, 200)}` : 'as expected',
    pass: errors.length === 0,
    ms: Date.now() - caseStarted,
  });
});

describe('kill -9 during run, then a rerun', () => {
  const points = [
    'phase.preflight:kill', 'phase.resolve:kill', 'phase.pull:kill', 'unpack.entry:kill@2000',
    'phase.selinux:kill', 'phase.etc-plan:kill', 'phase.mount:kill', 'mount.booted-usr:kill@1',
    'mount.booted-usr:kill@2', 'mount.prepare:kill@5', 'mount.switch:kill', 'mount.switched:kill', 'phase.etc-apply:kill', 'etc.apply.action:kill@1', 'etc.apply.commit:kill',
    'pivot.switched:kill', 'phase.refresh:kill',
    // The delta's own steps: mid-way through leaving out identical files, and at the whiteouts.
    ...(process.env.NODE_IMAGE_PIVOT_E2E_STAGING === 'delta' ? ['delta.skip:kill@3000', 'delta.whiteouts:kill'] : []),
  ];
  it.each(points)('%s: /etc is old or merged, and the rerun converges on the clean result', async (point) => {
    const m = await serviceMachine(`kill-${point.replace(/[^a-z0-9]+/gi, '-')}`.slice(0, 40));
    try {
      const killed = await m.exec([AGENT, 'run', '--no-isolate'], { env: { NODE_IMAGE_PIVOT_FAILPOINTS: point } });
      expect(killed.exitCode).not.toBe(0);
      const etcAfterKill = await sh(m, ETC_MERGE_FINGERPRINT);
      // A kill inside the /etc apply leaves a journal (the next run's preflight rolls it back);
      // anywhere else /etc is whole, old or merged.
      const journal = (await sh(m, 'ls -d /.node-image-pivot-etc-journal /etc/.node-image-pivot-etc-journal 2>/dev/null | wc -l')).trim();
      if (point.startsWith('etc.apply')) expect(journal).toBe('1');
      else expect([bootEtcFiles, mergedEtcFiles]).toContain(etcAfterKill);
      expect(['old', 'new']).toContain(await usrIs(m));

      const rerun = await m.exec([AGENT, 'run', '--no-isolate']);
      expect(rerun.exitCode, rerun.stderr).toBe(0);
      expect(await usrIs(m)).toBe('new');
      expect(await sh(m, ETC_FINGERPRINT)).toBe(mergedEtc);
      expect(await sh(m, 'cat /etc/motd')).toBe(LOCAL_MOTD);
      // Exactly one mount on /usr: a retry never stacks a second one, and leaks nothing.
      expect(await sh(m, `awk '$5 == "/usr"' /proc/self/mountinfo | wc -l`)).toBe('1\n');
      expect(await ownMounts(m)).toBe(ONLY_BOOTED_USR);
    } finally {
      await m.dispose();
    }
  });
});

describe('SIGTERM during run', () => {
  const PARKED = '/run/nip-parked';
  interface TermState { result: string; error?: { kind: string; message: string; line: string }; phases: Array<{ name: string; result: string }> }

  /** Parks the run at `failpoint`, waits until it says so, sends SIGTERM, and waits for the end. */
  async function termDuring(m: Machine, failpoint: string, args: string[] = ['--no-isolate']): Promise<{ status: string; state: TermState }> {
    await m.exec(['systemd-run', '--unit=nip-term', `--setenv=NODE_IMAGE_PIVOT_FAILPOINTS=${failpoint}`,
      `--setenv=NODE_IMAGE_PIVOT_PARKED_FILE=${PARKED}`, AGENT, 'run', ...args], { direct: true });
    const parked = await waitFor(async () => (await sh(m, `cat ${PARKED} 2>/dev/null || true`)).trim() || undefined,
      `the run to park at ${failpoint}`, { timeoutMs: 120_000, intervalMs: 100 });
    expect(parked).toMatch(new RegExp(`^${failpoint.split(':')[0]!.replace(/\./g, '\\.')} \\d+ \\d+$`));
    // To the agent alone, as a stop does with the units' KillMode=mixed: systemd's kill of the
    // whole cgroup keeps looking for new processes, and would also hit the agent's next mount child.
    await m.exec(['systemctl', 'kill', '--kill-whom=main', '--signal=SIGTERM', 'nip-term.service'], { direct: true });
    await m.waitForUnit('nip-term.service', ['inactive', 'failed'], 120_000);
    const status = (await sh(m, 'systemctl show -p ExecMainStatus --value nip-term.service')).trim();
    const state = JSON.parse(await sh(m, 'cat /run/node-image-pivot/state.json')) as TermState;
    return { status, state };
  }

  // At the start of each phase. selinux (it may load a policy), mount and etc-apply are critical:
  // the stop waits for the step, then the failure path decides: before /etc is applied that means
  // all old, after it all new.
  const outcomes: Array<[string, 'old' | 'new']> = [
    ['preflight', 'old'], ['resolve', 'old'], ['pull', 'old'], ['etc-plan', 'old'], ['selinux', 'old'],
    ['mount', 'old'], ['etc-apply', 'new'], ['refresh', 'new'],
  ];
  it.each(outcomes)('at the start of %s: exit 10, all %s, and the rerun converges', async (phase, expected) => {
    const m = await serviceMachine(`term-${phase}`);
    try {
      const r = await termDuring(m, `phase.${phase}:park`);
      expect(r.status, r.state.error?.line).toBe('10');
      expect(r.state.result).toBe('failed');
      expect(r.state.error?.kind).toBe('interrupted');
      // The state file names the phase the signal landed in; a critical one finished first.
      expect(r.state.error?.message).toBe(`stopped by SIGTERM during phase ${phase}`);
      expect(r.state.phases.at(-1)).toMatchObject({ name: phase, result: ['selinux', 'mount', 'etc-apply'].includes(phase) ? 'done' : 'running' });
      expect(await usrIs(m)).toBe(expected);
      expect(await sh(m, ETC_MERGE_FINGERPRINT)).toBe(expected === 'old' ? bootEtcFiles : mergedEtcFiles);
      expect(await sh(m, `awk '$5 == "/usr"' /proc/self/mountinfo | wc -l`)).toBe(expected === 'old' ? '0\n' : '1\n');
      const rerun = await m.exec([AGENT, 'run', '--no-isolate']);
      expect(rerun.exitCode, rerun.stderr).toBe(0);
      expect(await sh(m, ETC_FINGERPRINT)).toBe(mergedEtc);
      expect(await ownMounts(m)).toBe(ONLY_BOOTED_USR);
    } finally {
      await m.dispose();
    }
  });

  it('during the mount (critical): finishes the step, then undoes it: all old, exit 10', async () => {
    const m = await serviceMachine('term-mount');
    try {
      const r = await termDuring(m, 'mount.prepare:park@1');
      expect(r.status, r.state.error?.line).toBe('10');
      expect(r.state.error?.line).toMatch(/interrupted: stopped by SIGTERM during phase mount/);
      expect(r.state.phases.at(-1)).toMatchObject({ name: 'mount', result: 'done' });
      expect(await usrIs(m)).toBe('old');
      expect(await sh(m, ETC_FINGERPRINT)).toBe(bootEtc);
      const rerun = await m.exec([AGENT, 'run', '--no-isolate']);
      expect(rerun.exitCode, rerun.stderr).toBe(0);
      expect(await sh(m, ETC_FINGERPRINT)).toBe(mergedEtc);
    } finally {
      await m.dispose();
    }
  });

  it('after the pivot finished (the final reload): exit 0, and the state file still says done', async () => {
    const m = await serviceMachine('term-done');
    try {
      // Isolate mode in a machine already in multi-user.target: the isolate is skipped, the final reload runs.
      const r = await termDuring(m, 'pivot.done:park', []);
      expect(r.status).toBe('0');
      expect(r.state.result).toBe('done');
      expect(r.state.error).toBeUndefined();
      expect(await usrIs(m)).toBe('new');
    } finally {
      await m.dispose();
    }
  });
});

describe('reruns after a kill in the mount phase', () => {
  it('a third run after a leaked assembly and a failed refresh pivots, and is not refused as another image', async () => {
    const m = await serviceMachine('kill-then-fail');
    try {
      const killed = await m.exec([AGENT, 'run', '--no-isolate'], { env: { NODE_IMAGE_PIVOT_FAILPOINTS: 'mount.switch:kill' } });
      expect(killed.exitCode).not.toBe(0);
      const failed = await m.exec([AGENT, 'run', '--no-isolate'], { env: { NODE_IMAGE_PIVOT_FAILPOINTS: 'phase.refresh:error=systemd' } });
      expect(failed.exitCode).toBe(8);
      const third = await m.exec([AGENT, 'run', '--no-isolate']);
      expect(third.exitCode, third.stderr).toBe(0);
      expect(await usrIs(m)).toBe('new');
      expect(await sh(m, `awk '$5 == "/usr"' /proc/self/mountinfo | wc -l`)).toBe('1\n');
      expect(await ownMounts(m)).toBe(ONLY_BOOTED_USR);
    } finally {
      await m.dispose();
    }
  });
});

describe('preflight', () => {
  it('refuses to stage without room, with the numbers, before changing anything (exit 9)', async () => {
    const m = await bootMachine({
      name: 'no-space', bootUnit: 'multi-user.target',
      // Staging on /run as it is (by default it would get a tmpfs of its own, sized to this host's RAM).
      prepare: (root) => installInto(root, { image: fx.image.ref, registryHost: fx.registry.host, generator: false, config: { spaceFactor: 100, stagingTmpfs: 'off', staging: 'full' } }),
      // spaceFactor is full staging's bound; delta's (the compressed size) is test/e2e/delta.test.ts's.
    });
    try {
      await m.waitForSystemState(['running', 'degraded']);
      const free = Number((await sh(m, 'df -B1 --output=avail /run | tail -1')).trim());
      const r = await m.exec([AGENT, 'run', '--no-isolate']);
      expect(free).toBeLessThan(fx.image.layers.reduce((n, l) => n + l.size, 0) * 100);
      expect(r.exitCode).toBe(9);
      expect(r.stderr).toMatch(/preflight: staging needs \d+ MiB \(\d+ MiB compressed x spaceFactor 100\) but only \d+ MiB is free/);
      expect(await usrIs(m)).toBe('old');
      expect(await sh(m, 'ls /run/node-image-pivot/staging 2>/dev/null | wc -l')).toBe('0\n');
    } finally {
      await m.dispose();
    }
  });
});

describe('a second pivot in the same boot', () => {
  it('to a different image is refused before anything changes, and the running /usr is kept', async () => {
    const m = await serviceMachine('second-pivot');
    try {
      const first = await m.exec([AGENT, 'run', '--no-isolate']);
      expect(first.exitCode, first.stderr).toBe(0);
      await sh(m, `sed -i 's#${fx.image.ref}#${fx.conflictImage.ref}#' /etc/node-image-pivot/config.json`);
      const etc = await sh(m, ETC_FINGERPRINT);
      const second = await m.exec([AGENT, 'run', '--no-isolate']);
      expect(second.exitCode).toBe(2);
      expect(second.stderr).toMatch(/\/usr already shows another node image .* Fix: reboot to pivot to sha256:/);
      expect(await usrIs(m)).toBe('new');
      expect(await sh(m, `ls ${NODE_VERSION_FILE} /run/node-image-pivot/staging`)).toContain(fx.image.manifestDigest.slice(7));
      expect(await sh(m, ETC_FINGERPRINT)).toBe(etc);
    } finally {
      await m.dispose();
    }
  });
});

describe('the isolate job fails', () => {
  it('names the failed unit, exits 8, and the state file says so', async () => {
    const broken = '[Unit]\nDescription=a unit multi-user.target requires, which fails\n[Service]\nType=oneshot\nExecStart=/bin/false\n';
    const m = await bootMachine({
      name: 'isolate-fails',
      prepare: (root) => installInto(root, {
        image: fx.image.ref, registryHost: fx.registry.host,
        files: {
          'etc/systemd/system/nip-broken.service': broken,
          'etc/systemd/system/multi-user.target.d/90-broken.conf': '[Unit]\nRequires=nip-broken.service\nAfter=nip-broken.service\n',
          // One attempt is enough to look at.
          'etc/systemd/system/node-image-pivot.service.d/95-once.conf': '[Service]\nRestart=no\n',
        },
      }),
    });
    try {
      await m.waitForUnit('node-image-pivot.service', 'failed', 120_000);
      expect((await sh(m, 'systemctl show -p ExecMainStatus --value node-image-pivot.service')).trim()).toBe('8');
      const journal = await m.journal('node-image-pivot.service');
      expect(journal).toMatch(/systemd: .*nip-broken\.service.*Fix: /);
      const state = JSON.parse(await sh(m, 'cat /run/node-image-pivot/state.json')) as { result: string; error: { exitCode: number }; phases: Array<{ name: string; result: string }> };
      expect(state.result).toBe('failed');
      expect(state.error.exitCode).toBe(8);
      expect(state.phases.at(-1)).toMatchObject({ name: 'isolate', result: 'failed' });
      // The pivot itself completed: a failed isolate does not undo it.
      expect(await usrIs(m)).toBe('new');
    } finally {
      await m.dispose();
    }
  });
});
