// The pivot end to end: real systemd (nspawn), real registry, the real single executable.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootMachine, type Machine } from '../../scripts/testbed/machine.ts';
import { startRegistry } from '../helpers/registry.ts';
import { waitFor } from '../helpers/wait.ts';
import { KUBELET_MARKER, NODE_USER, NODE_VERSION_FILE, PROBE_MARKER } from '../helpers/node-image.ts';
import { BOOTED_MODULES, LOCAL_MOTD, installInto, setUpPivotFixture, type PivotFixture } from './pivot-fixture.ts';

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
  const r = await m.exec(['sh', '-c', script], { direct: true });
  return r.stdout;
}

async function statusJson(m: Machine): Promise<{ state: { result: string; mode: string; phases: Array<{ name: string; result: string; seconds?: number }>; error?: { line: string; exitCode: number }; image?: { digest?: string; releaseImage?: string } } }> {
  const r = await m.exec(['/usr/local/bin/node-image-pivot', 'status', '--json']);
  return JSON.parse(r.stdout);
}

describe('pivot e2e', () => {
  it('isolate mode: boots into the pivot target, pivots, and reaches multi-user on the new /usr', async () => {
    const m = await boot({ name: 'pivot-isolate', prepare: (root) => installInto(root, { image: fx.image.ref, registryHost: fx.registry.host }) });
    await m.waitForUnit('multi-user.target', 'active', 240_000);
    await m.waitForUnit('kubelet.service', 'active', 60_000);

    expect((await sh(m, `cat ${NODE_VERSION_FILE}`)).trim()).toBe('4.20.0-e2e');
    expect(await sh(m, `cat ${KUBELET_MARKER}`)).toMatch(/^kubelet 4\.20\.0-e2e as \d+/);
    await m.waitForUnit('nip-probe.service', 'active', 30_000);
    expect((await sh(m, `cat ${PROBE_MARKER}`)).trim()).toBe('new');
    // /etc: local edit kept, upstream change arrived, upstream removal applied.
    expect(await sh(m, 'cat /etc/motd')).toBe(LOCAL_MOTD);
    expect(await sh(m, 'cat /etc/issue')).toMatch(/^Node image 4\.20\.0-e2e/);
    expect(await sh(m, 'test -e /etc/issue.net && echo present || echo absent')).toBe('absent\n');
    // The booted kernel's modules stay; the image's do not show.
    expect(await sh(m, `cat /${BOOTED_MODULES}/marker; ls /usr/lib/modules`)).toBe('booted modules\nbooted-kernel\n');
    expect((await sh(m, `getent passwd ${NODE_USER} | cut -d: -f1`)).trim()).toBe(NODE_USER);
    expect(await sh(m, 'touch /usr/nip-write-test 2>&1 || echo read-only')).toMatch(/read-only/i);

    const status = await statusJson(m);
    expect(status.state.result).toBe('done');
    expect(status.state.mode).toBe('isolate');
    expect(status.state.image?.digest).toBe(fx.image.manifestDigest);
    expect(status.state.phases.map((p) => `${p.name}:${p.result}`)).toEqual([
      'preflight:done', 'resolve:done', 'pull:done', 'etc-plan:done', 'selinux:done', 'mount:done',
      'etc-apply:done', 'refresh:done', 'isolate:done',
    ]);
    // The generator, rerun by the final reload, no longer sends default.target to the pivot.
    expect((await sh(m, 'systemctl get-default')).trim()).toBe('multi-user.target');
    // sd_notify: the last STATUS= stays visible in `systemctl status`.
    expect(await sh(m, 'systemctl show -p StatusText --value node-image-pivot.service')).toBe(`pivoted to ${fx.image.manifestDigest}\n`);
    const svc = await m.unitState('node-image-pivot.service');
    expect(svc.result).toBe('success');
    const journal = await m.journal('node-image-pivot.service');
    expect(journal).not.toMatch(/Failed with result 'signal'/);
    console.log('scenario 1 phase seconds:', Object.fromEntries(status.state.phases.map((p) => [p.name, p.seconds])));

    // Scenario 4: a rerun after success is a no-op.
    const mountsBefore = await sh(m, 'grep -c " /usr" /proc/self/mountinfo');
    const etcBefore = await sh(m, 'find /etc -xdev -newer /etc/motd -type f | sort | wc -l; md5sum /etc/issue /etc/motd');
    const rerun = await m.exec(['/usr/local/bin/node-image-pivot', 'run']);
    expect(rerun.exitCode).toBe(0);
    expect(rerun.stderr).toMatch(/already pivoted this boot/);
    expect(await sh(m, 'grep -c " /usr" /proc/self/mountinfo')).toBe(mountsBefore);
    expect(await sh(m, 'find /etc -xdev -newer /etc/motd -type f | sort | wc -l; md5sum /etc/issue /etc/motd')).toBe(etcBefore);
    expect((await statusJson(m)).state.result).toBe('skipped');
    await m.poweroff();
  });

  it('service mode, from a release image: a kubelet-like unit ordered after node-image-overlay.service sees the new /usr, no isolate', async () => {
    const consumer = [
      '[Unit]', 'Requires=node-image-overlay.service', 'After=node-image-overlay.service',
      '[Service]', 'Type=oneshot', 'RemainAfterExit=yes',
      `ExecStart=/bin/sh -c 'cat ${NODE_VERSION_FILE} > /results/consumer-saw'`, '',
    ].join('\n');
    const m = await boot({
      name: 'pivot-service', bootUnit: 'multi-user.target',
      prepare: (root) => installInto(root, {
        registryHost: fx.registry.host, generator: false,
        config: { releaseImage: fx.releaseRef, component: 'rhel-coreos' },
        files: { 'etc/systemd/system/nip-consumer.service': consumer },
      }),
    });
    // A dry run first: it prints the plan and changes nothing on the system.
    await m.waitForSystemState(['running', 'degraded']);
    const dry = await m.exec(['/usr/local/bin/node-image-pivot', 'run', '--dry-run', '--json']);
    expect(dry.exitCode).toBe(0);
    const plan = JSON.parse(dry.stdout) as { image: { manifestDigest: string; layerCount: number }; etc: { actions: number; conflicts: string[] } };
    expect(plan.image).toMatchObject({ manifestDigest: fx.image.manifestDigest, layerCount: 2 });
    expect(plan.etc.conflicts).toEqual([]);
    expect(plan.etc.actions).toBeGreaterThan(0);
    expect(await sh(m, `test -e ${NODE_VERSION_FILE} && echo new || echo old; cat /etc/issue; test -e /run/node-image-pivot/state.json && echo state || echo no-state`))
      .toMatch(/^old\n(?!Node image)[^]*no-state\n$/);
    await m.exec(['systemctl', 'start', '--no-block', 'nip-consumer.service'], { direct: true });
    await m.waitForUnit('nip-consumer.service', ['active', 'failed'], 240_000);
    expect((await sh(m, 'cat /results/consumer-saw')).trim()).toBe('4.20.0-e2e');
    const status = await statusJson(m);
    expect(status.state.mode).toBe('service');
    expect(status.state.image).toMatchObject({ releaseImage: fx.releaseRef, digest: fx.image.manifestDigest });
    expect(status.state.result).toBe('done');
    expect(status.state.phases.find((p) => p.name === 'isolate')?.result).toBe('skipped');
    expect(await m.unitState('node-image-pivot.target')).toMatchObject({ activeState: 'inactive' });
    await m.poweroff();
  });

  it('conflict in /etc: stops before any change with exit 7 and the path', async () => {
    const m = await boot({
      name: 'pivot-conflict', bootUnit: 'multi-user.target',
      prepare: (root) => installInto(root, {
        image: fx.conflictImage.ref, registryHost: fx.registry.host, generator: false,
        files: { 'usr/etc/nip-conflict': 'default\n', 'etc/nip-conflict': 'changed locally\n' },
      }),
    });
    await m.waitForSystemState(['running', 'degraded']);
    const r = await m.exec(['/usr/local/bin/node-image-pivot', 'run', '--no-isolate']);
    expect({ exitCode: r.exitCode, stderr: r.stderr }).toMatchObject({ exitCode: 7 });
    expect(r.stderr).toMatch(/nip-conflict/);
    expect(await sh(m, `test -e ${NODE_VERSION_FILE} && echo new || echo old`)).toBe('old\n');
    expect(await sh(m, 'cat /etc/nip-conflict; cat /etc/motd')).toBe(`changed locally\n${LOCAL_MOTD}`);
    // Nothing mounted at /usr (field 5; a delta's booted-usr bind has /usr as its root, field 4).
    expect(await sh(m, `awk '$5 == "/usr"' /proc/self/mountinfo | wc -l`)).toBe('0\n');
    const status = await statusJson(m);
    expect(status.state.result).toBe('failed');
    expect(status.state.error?.exitCode).toBe(7);
    await m.poweroff();
  });

  it('registry down at boot: fails with a one-line cause, changes nothing, and converges once it is back', async () => {
    const down = await startRegistry({ storageDir: fx.registry.storageDir });
    const host = down.host;
    await down.stop();
    const ref = fx.image.ref.replace(fx.registry.host, host);
    const m = await boot({ name: 'pivot-down', prepare: (root) => installInto(root, { image: ref, registryHost: host }) });
    // Wait for at least one failed attempt with its cause in the journal.
    const journal = await waitFor(async () => {
      const text = await m.journal('node-image-pivot.service');
      return /network: .*Fix: /.test(text) ? text : undefined;
    }, 'a failed attempt with its cause in the journal', { timeoutMs: 120_000, intervalMs: 250 });
    expect(await sh(m, `test -e ${NODE_VERSION_FILE} && echo new || echo old`)).toBe('old\n');
    expect(await sh(m, 'cat /etc/issue')).not.toMatch(/Node image/);
    // Parked: the boot did not move on, sshd is up for debugging, and the service keeps retrying.
    expect((await m.unitState('multi-user.target')).activeState).not.toBe('active');
    expect(await sh(m, 'systemctl show -p Wants --value node-image-pivot.target')).toMatch(/sshd?\.service/);
    await m.waitForUnit('sshd.service', 'active', 30_000);
    const restarts = await waitFor(async () => {
      const n = Number(await sh(m, 'systemctl show -p NRestarts --value node-image-pivot.service'));
      return n >= 1 ? n : undefined;
    }, 'systemd to restart the service', { timeoutMs: 60_000, intervalMs: 250 });
    expect(restarts).toBeGreaterThanOrEqual(1);
    const failures = journal.split('\n').filter((l) => /network: .*Fix: /.test(l));
    expect(failures[0]).toMatch(/connect/);
    // What an operator sees: the failure with its fix, and that systemd keeps retrying.
    const human = (await m.exec(['/usr/local/bin/node-image-pivot', 'status'])).stdout;
    // Between attempts it shows the failure and its fix; during a retry, which attempt it is.
    expect(human).toMatch(/^pivot: failed[^\n]*\n(?:.*\n)*error: network: .*Fix: |^pivot: running[^\n]*, attempt [2-9]\d* this boot$/m);
    expect(human).toMatch(/^unit: node-image-pivot\.service \w+ \([\w-]+\), restarted \d+ times$/m);

    const port = Number(host.split(':')[1]);
    const back = await startRegistry({ storageDir: fx.registry.storageDir, port });
    try {
      await m.waitForUnit('multi-user.target', 'active', 120_000);
      expect((await sh(m, `cat ${NODE_VERSION_FILE}`)).trim()).toBe('4.20.0-e2e');
      expect((await statusJson(m)).state.result).toBe('done');
    } finally {
      await m.poweroff();
      await back.stop();
    }
  });
});
