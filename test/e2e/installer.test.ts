// What installers and operators meet, on real systemd: progress JSON lines through a FIFO wired
// into the unit as docs/progress.md says, the cause of a failing pivot at the console login
// prompt (and gone after success), and one pivot at a time.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from '../helpers/wait.ts';
import { bootMachine, type Machine } from '../../scripts/testbed/machine.ts';
import { startRegistry } from '../helpers/registry.ts';
import { NODE_VERSION_FILE } from '../helpers/node-image.ts';
import { installInto, setUpPivotFixture, type PivotFixture } from './pivot-fixture.ts';

const AGENT = '/usr/local/bin/node-image-pivot';
const ISSUE = '/run/issue.d/node-image-pivot.issue';
let fx: PivotFixture;
const machines: Machine[] = [];

beforeAll(async () => {
  fx = await setUpPivotFixture();
});
afterAll(async () => {
  for (const m of machines) await m.dispose().catch(() => undefined);
  await fx?.cleanup();
});

async function boot(opts: Parameters<typeof bootMachine>[0]): Promise<Machine> {
  const m = await bootMachine(opts);
  machines.push(m);
  return m;
}

async function sh(m: Machine, script: string): Promise<string> {
  return (await m.exec(['sh', '-c', script], { direct: true })).stdout;
}

async function until<T>(what: string, get: () => Promise<T>, ok: (t: T) => boolean, timeoutMs = 60_000): Promise<T> {
  // Boxed, so that a falsy value that passes `ok` (an empty string) still ends the wait.
  const got = await waitFor(async () => { const v = await get(); return ok(v) ? { v } : undefined; }, what, { timeoutMs, intervalMs: 100 });
  return got.v;
}

/**
 * What agetty prints above the login prompt, with the issue paths CoreOS gives its gettys
 * (fedora-coreos-config's getty drop-ins; stock agetty reads /run/issue.d only without an
 * /etc/issue). agetty wants a terminal, so script(1) gives it one.
 */
async function shownAtLogin(m: Machine): Promise<string> {
  const out = (await sh(m, "script -qec 'agetty --show-issue --issue-file /etc/issue:/etc/issue.d:/run/issue.d:/usr/lib/issue.d' /dev/null 2>&1")).replace(/\r/g, '');
  expect(out).not.toMatch(/agetty: failed/);
  return out;
}

interface JournalLine { pid: number; msg: string; time: string; level: number }
/** The agent's JSON log lines of one unit, with the pid that wrote them. */
async function agentLog(m: Machine, unit: string): Promise<JournalLine[]> {
  const out = await sh(m, `journalctl -u ${unit} -o json --no-pager -q`);
  const lines: JournalLine[] = [];
  for (const row of out.split('\n').filter(Boolean)) {
    const j = JSON.parse(row) as { MESSAGE?: string | number[]; _PID?: string };
    const text = typeof j.MESSAGE === 'string' ? j.MESSAGE : Buffer.from(j.MESSAGE ?? []).toString();
    if (!text.startsWith('{')) continue;
    try {
      const p = JSON.parse(text) as { msg: string; time: string; level: number };
      lines.push({ pid: Number(j._PID), msg: p.msg, time: p.time, level: p.level });
    } catch { /* not ours */ }
  }
  return lines;
}

describe('installer-facing interfaces e2e', () => {
  it('progress through a FIFO wired by a drop-in: one real pivot, every phase, byte progress per layer, the result; no console message after success', async () => {
    const m = await boot({
      name: 'inst-progress',
      prepare: (root) => installInto(root, {
        image: fx.image.ref, registryHost: fx.registry.host,
        files: {
          // Exactly what docs/progress.md tells an installer to ship.
          'etc/tmpfiles.d/nip-installer.conf': 'p /run/nip-installer/progress.fifo 0600 root root -\n',
          'etc/systemd/system/node-image-pivot.service.d/50-progress.conf': [
            '[Unit]', 'Wants=nip-progress-reader.service', 'After=nip-progress-reader.service',
            '[Service]', 'ExecStart=',
            `ExecStart=/bin/sh -c 'exec ${AGENT} run --progress-fd 3 3<>/run/nip-installer/progress.fifo'`, '',
          ].join('\n'),
          // The installer's reader; it must outlive the isolate to read the result.
          'etc/systemd/system/nip-progress-reader.service': [
            '[Unit]', 'IgnoreOnIsolate=yes',
            '[Service]', "ExecStart=/bin/sh -c 'exec cat /run/nip-installer/progress.fifo > /results/progress.jsonl'", '',
          ].join('\n'),
        },
      }),
    });
    await m.waitForUnit('multi-user.target', 'active', 240_000);
    // cat sees end of file when the pivot's descriptor closes, i.e. when the run has ended.
    await m.waitForUnit('nip-progress-reader.service', ['inactive', 'failed'], 60_000);
    const events = readFileSync(join(m.resultsDir, 'progress.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const counts: Record<string, number> = {};
    for (const e of events) counts[e.type as string] = (counts[e.type as string] ?? 0) + 1;
    console.log('progress events of one real pivot, by type:', counts);
    expect(events[0]).toMatchObject({ type: 'Start', version: 'org.openshift.node-image-pivot.progress/v1', command: 'run' });
    expect(events.at(-1)).toEqual({ type: 'Result', result: 'done', exitCode: 0, digest: fx.image.manifestDigest });
    const steps = events.filter((e) => e.type === 'ProgressSteps') as Array<{ subtasks: Array<{ id: string; completed: boolean }>; steps: number; stepsTotal: number }>;
    const ended = steps.filter((s) => s.subtasks[0]!.completed).map((s) => s.subtasks[0]!.id);
    expect(ended).toEqual(['preflight', 'resolve', 'pull', 'etc-plan', 'selinux', 'mount', 'etc-apply', 'refresh', 'isolate']);
    expect(steps.at(-1)).toMatchObject({ steps: 9, stepsTotal: 9 });
    const bytes = events.filter((e) => e.type === 'ProgressBytes') as Array<{ bytes: number; bytesTotal: number; subtasks: Array<{ id: string; bytesTotal: number }> }>;
    expect(bytes.length).toBeGreaterThan(0);
    const last = bytes.at(-1)!;
    expect(last.bytes).toBe(last.bytesTotal);
    expect(last.subtasks.map((s) => s.id)).toEqual(fx.image.layers.map((l) => l.digest));
    expect((await sh(m, `test -e ${ISSUE} && echo present || echo absent`)).trim()).toBe('absent');
    await m.poweroff();
  });

  it('a failing pivot shows its cause and fix at the login prompt while it retries, and the message goes once it succeeds', async () => {
    const down = await startRegistry({ storageDir: fx.registry.storageDir });
    const host = down.host;
    await down.stop();
    const ref = fx.image.ref.replace(fx.registry.host, host);
    const m = await boot({ name: 'inst-console', prepare: (root) => installInto(root, { image: ref, registryHost: host }) });
    const text = await until('the console message', () => sh(m, `cat ${ISSUE} 2>/dev/null`), (t) => /Fix: /.test(t));
    expect(text).toMatch(/^node-image-pivot: the pivot to the node image failed \(attempt \d+\) and is retried, exit 3, at \S+:\n {2}network: .*connect.*\. Fix: .+\n {2}More: journalctl -u node-image-pivot; node-image-pivot status\n/);
    // What agetty prints above the login prompt on the console and the serial line.
    expect(await shownAtLogin(m)).toContain(text.split('\n')[1]!.trim());
    // Failure to message: the file's own write time against the run's error line and its start.
    const writtenAt = Date.parse(/ at (\S+):\n/.exec(text)![1]!);
    const log = await agentLog(m, 'node-image-pivot.service');
    const errorLine = log.filter((l) => l.level === 50).map((l) => ({ ...l, t: Date.parse(l.time) }))
      .sort((a, b) => Math.abs(a.t - writtenAt) - Math.abs(b.t - writtenAt))[0]!;
    const runStart = log.filter((l) => l.pid === errorLine.pid).map((l) => Date.parse(l.time)).sort((a, b) => a - b)[0]!;
    const fileMtime = Number((await sh(m, `date -r ${ISSUE} +%s%3N`)).trim());
    console.log('failure to console message:', {
      issueWrittenMinusErrorLogMs: writtenAt - errorLine.t, issueMtimeMinusErrorLogMs: fileMtime - errorLine.t, issueWrittenMinusRunStartMs: writtenAt - runStart,
    });
    expect(Math.abs(writtenAt - errorLine.t)).toBeLessThan(5_000);

    const back = await startRegistry({ storageDir: fx.registry.storageDir, port: Number(host.split(':')[1]) });
    try {
      await m.waitForUnit('multi-user.target', 'active', 180_000);
      // The run clears the message after its isolate job and final reload: multi-user.target is
      // active a moment before. A oneshot with RemainAfterExit is active once the run has exited 0.
      await m.waitForUnit('node-image-pivot.service', 'active', 60_000);
      expect((await sh(m, `cat ${NODE_VERSION_FILE}`)).trim()).toBe('4.20.0-e2e');
      expect((await sh(m, `test -e ${ISSUE} && echo present || echo absent`)).trim()).toBe('absent');
      expect(await shownAtLogin(m)).not.toContain('node-image-pivot');
      await m.poweroff();
    } finally {
      await back.stop();
    }
  });

  it('one pivot at a time: a run by hand while the unit runs exits 11 with --no-wait, or waits naming the holder; kill -9 of the holder frees it', async () => {
    const m = await boot({
      name: 'inst-lock', bootUnit: 'multi-user.target',
      prepare: (root) => installInto(root, {
        image: fx.image.ref, registryHost: fx.registry.host, generator: false,
        files: {
          // The holder stops in resolve for long enough to be looked at; no restart after kill -9.
          'etc/systemd/system/node-image-overlay.service.d/50-test.conf': '[Service]\nEnvironment=NODE_IMAGE_PIVOT_FAILPOINTS=phase.resolve:sleep=600000\nRestart=no\n',
        },
      }),
    });
    await m.waitForSystemState(['running', 'degraded']);
    await m.exec(['systemctl', 'start', '--no-block', 'node-image-overlay.service'], { direct: true });
    const holderPid = Number((await until('the holder in resolve', async () => {
      const lines = await agentLog(m, 'node-image-overlay.service');
      return String(lines.find((l) => l.msg === 'phase resolve started')?.pid ?? '');
    }, (p) => p !== '')));
    expect(JSON.parse(await sh(m, 'cat /run/node-image-pivot/pivot.lock'))).toMatchObject({ pid: holderPid, unit: 'node-image-overlay.service' });
    const stateBefore = await sh(m, 'cat /run/node-image-pivot/state.json');

    const noWait = await m.exec([AGENT, 'run', '--no-isolate', '--no-wait']);
    expect(noWait.exitCode).toBe(11);
    expect(noWait.stderr).toContain(`another pivot is running on this node: pid ${holderPid} (node-image-overlay.service)`);
    expect(await sh(m, 'cat /run/node-image-pivot/state.json')).toBe(stateBefore);

    await m.exec(['systemd-run', '--unit=nip-second', '-p', 'RemainAfterExit=yes', '--', AGENT, 'run', '--no-isolate'], { direct: true });
    await until('the second run to wait', () => agentLog(m, 'nip-second.service'),
      (ls) => ls.some((l) => l.msg.includes(`pid ${holderPid} (node-image-overlay.service)`) && /waiting up to 1800 s/.test(l.msg)));
    // While it waits it does nothing: no phase, and the holder's state file is untouched.
    expect((await agentLog(m, 'nip-second.service')).filter((l) => l.msg.startsWith('phase '))).toEqual([]);
    expect(await sh(m, 'cat /run/node-image-pivot/state.json')).toBe(stateBefore);

    const killedAt = Date.now();
    await m.exec(['systemctl', 'kill', '-s', 'KILL', 'node-image-overlay.service'], { direct: true });
    // ExecMainCode turns 1 (CLD_EXITED) when the process has exited; RemainAfterExit keeps the unit.
    await until('the second run to exit', () => sh(m, 'systemctl show -p ExecMainCode --value nip-second.service'), (s) => s.trim() === '1', 240_000);
    expect((await sh(m, 'systemctl show -p ExecMainStatus --value nip-second.service')).trim()).toBe('0');
    const second = await agentLog(m, 'nip-second.service');
    expect(second.find((l) => l.msg.startsWith('phase '))?.msg).toBe('phase preflight started');
    expect(second.some((l) => l.msg === 'the other pivot finished; this run goes on')).toBe(true);
    const state = JSON.parse(await sh(m, 'cat /run/node-image-pivot/state.json')) as { result: string; pid: number };
    expect(state.result).toBe('done');
    expect(state.pid).not.toBe(holderPid);
    expect((await sh(m, `cat ${NODE_VERSION_FILE}`)).trim()).toBe('4.20.0-e2e');
    console.log('lock: second run finished', Date.now() - killedAt, 'ms after kill -9 of the holder');
    await m.poweroff();
  });
});
