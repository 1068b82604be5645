// The test bed itself (issue 2, item 6): machines leave nothing behind - no nspawn, no guest
// process, no mount under their directories - whether the guest powers off cleanly or has to be
// killed; the shared rootfs is never written; the journal outlives the machine until dispose.
import { existsSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { bootMachine, ensureRootfs, mountsUnder, processAlive, type Machine } from '../helpers/machine.ts';

/** Host PIDs of every process in the guest's PID namespace. */
function pidsInNamespace(nsLink: string): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readlinkSync(`/proc/${entry}/ns/pid`) === nsLink) out.push(Number(entry));
    } catch {
      // exited while we looked
    }
  }
  return out;
}

async function assertNothingLeft(m: Machine, nsLink: string): Promise<void> {
  expect(processAlive(m.nspawnPid), 'nspawn still running').toBe(false);
  expect(processAlive(m.leaderPid), 'guest PID 1 still running').toBe(false);
  expect(pidsInNamespace(nsLink), 'processes left in the guest PID namespace').toEqual([]);
  expect(mountsUnder(m.dir), 'mounts left under the machine dir').toEqual([]);
  expect(existsSync(`/run/systemd/nspawn/propagate/${m.name}`)).toBe(false);
}

describe('test bed machines', () => {
  it('power off cleanly and leave no process or mount; the journal stays until dispose', async () => {
    const { tree } = await ensureRootfs();
    const m = await bootMachine({
      name: 'nip-tb-clean',
      prepare: (root) => writeFileSync(join(root, 'etc/nip-prepared'), 'upper only\n'),
    });
    try {
      await m.waitForSystemState('running');
      const nsLink = readlinkSync(`/proc/${m.leaderPid}/ns/pid`);
      // Work the poweroff has to clean up: a long-running service and a mount inside the guest.
      await m.exec(['systemd-run', '--unit=nip-sleeper', 'sleep', 'infinity'], { direct: true });
      await m.waitForUnit('nip-sleeper.service', 'active');
      expect((await m.exec(['sh', '-c', 'mkdir -p /mnt/t && mount -t tmpfs t /mnt/t && echo ok'], { direct: true })).stdout).toBe('ok\n');
      expect(pidsInNamespace(nsLink).length).toBeGreaterThan(3);
      await m.exec(['logger', '-t', 'nip-testbed', 'journal-marker-42']);
      expect((await m.exec(['cat', '/etc/nip-prepared'])).stdout).toBe('upper only\n');

      await m.poweroff();
      await assertNothingLeft(m, nsLink);
      expect(m.isRunning).toBe(false);
      // The shared lower dir was not written; the upper got the file.
      expect(existsSync(join(tree, 'etc/nip-prepared'))).toBe(false);
      expect(existsSync(join(m.upper, 'etc/nip-prepared'))).toBe(true);
      expect(await m.journal()).toContain('journal-marker-42');
      expect(await m.journal('nip-sleeper.service')).toMatch(/Started nip-sleeper\.service/);
      await expect(m.exec(['true'])).rejects.toThrow(/not running/);
    } finally {
      await m.dispose();
    }
    expect(existsSync(m.dir)).toBe(false);
  });

  it('kill nspawn when the guest will not power off in time, still leaving nothing', async () => {
    const m = await bootMachine({
      name: 'nip-tb-stuck',
      prepare: (root) => writeFileSync(join(root, 'etc/systemd/system/nip-stuck.service'),
        '[Service]\nExecStart=sleep infinity\nExecStop=sleep infinity\nTimeoutStopSec=infinity\n[Install]\nWantedBy=multi-user.target\n'),
    });
    try {
      await m.exec(['systemctl', 'start', 'nip-stuck.service'], { direct: true });
      const nsLink = readlinkSync(`/proc/${m.leaderPid}/ns/pid`);
      const t0 = Date.now();
      await m.poweroff(1500);
      expect(Date.now() - t0).toBeLessThan(10_000);
      await assertNothingLeft(m, nsLink);
    } finally {
      await m.dispose();
    }
  });

  it('boots the chosen unit; a missing agent binary is a clear error', async () => {
    const m = await bootMachine({ name: 'nip-tb-unit', bootUnit: 'rescue.target' });
    try {
      await m.waitForUnit('rescue.target', 'active');
      expect((await m.unitState('multi-user.target')).activeState).toBe('inactive');
    } finally {
      await m.dispose();
    }
    await expect(bootMachine({ name: 'nip-tb-bad', agentBinary: '/nonexistent/agent' })).rejects.toThrow(/npm run build/);
  });
});
