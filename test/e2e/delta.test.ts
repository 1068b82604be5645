// Delta staging end to end in nspawn: the /usr a delta pivot shows is the /usr a full pivot shows
// (the oracle on the e2e node image), at a fraction of the staging bytes; a staging filesystem
// that fills during the delta fails with exit 9 and leaves the node all old, then converges.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureRootfs } from '../../scripts/testbed/rootfs.ts';
import { bootMachine, type Machine } from '../../scripts/testbed/machine.ts';
import { NODE_VERSION_FILE, buildAndPushNodeImage, type PushedNodeImage } from '../helpers/node-image.ts';
import { LOCAL_MOTD, installInto, setUpPivotFixture, type PivotFixture } from './pivot-fixture.ts';

const AGENT = '/usr/local/bin/node-image-pivot';
const MiB = 1024 ** 2;
let fx: PivotFixture;
/** The node image plus 8 MiB that does not compress and is not in the booted /usr. */
let bulky: PushedNodeImage;
/** The node image that also removes a booted /usr directory and replaces one wholesale. */
let reshaped: PushedNodeImage;

beforeAll(async () => {
  fx = await setUpPivotFixture();
  const { tree } = await ensureRootfs();
  bulky = await buildAndPushNodeImage({
    tree, layoutDir: join(fx.workDir, 'layout-bulky'), registryHost: fx.registry.host, version: '4.20.0-bulky',
    extraEntries: [{ type: 'file', name: 'usr/lib/nip-bulk.bin', body: randomBytes(8 * MiB) }],
  });
  reshaped = await buildAndPushNodeImage({
    tree, layoutDir: join(fx.workDir, 'layout-reshaped'), registryHost: fx.registry.host, version: '4.20.0-reshaped',
    extraEntries: [
      { type: 'file', name: 'usr/share/doc/.wh.apt', body: '' },
      { type: 'file', name: 'usr/share/common-licenses/.wh..wh..opq', body: '' },
      { type: 'file', name: 'usr/share/common-licenses/NIP-1.0', body: 'the only licence left\n' },
    ],
  });
});

afterAll(async () => {
  await fx?.cleanup();
});

async function sh(m: Machine, script: string): Promise<string> {
  return (await m.exec(['sh', '-c', script], { direct: true })).stdout;
}

async function machine(name: string, image: string, config: Record<string, unknown>, files: Record<string, string> = {}): Promise<Machine> {
  const m = await bootMachine({
    name, bootUnit: 'multi-user.target',
    prepare: (root) => installInto(root, { image, registryHost: fx.registry.host, generator: false, config, files }),
  });
  await m.waitForSystemState(['running', 'degraded']);
  return m;
}

/**
 * What /usr shows: every path with type, mode, owner, size and link target, and every file's
 * md5 (the test bed has no SELinux and its images carry no xattrs the shell could not see). A
 * directory's st_size is the filesystem's bookkeeping (tmpfs counts entries; an overlay directory
 * reports its top layer's), not content, so it is left out.
 */
const USR_DIGEST = "cd /usr && find . \\( -type d -printf '%p %y %m %U %G\\n' \\) -o -printf '%p %y %m %U %G %s %l\\n' | LC_ALL=C sort | md5sum; "
  + 'find . -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum | md5sum';

interface PullFacts { stagingMode?: string; stagingUsedBytes?: number; expandedBytes?: number; delta?: { skipped: number; whiteouts: number; opaqueDirs: number } }
async function pullFacts(m: Machine): Promise<PullFacts> {
  const state = JSON.parse(await sh(m, 'cat /run/node-image-pivot/state.json')) as { phases: Array<{ name: string; facts?: PullFacts }> };
  return state.phases.find((p) => p.name === 'pull')?.facts ?? {};
}

describe('delta staging in nspawn', () => {
  it('a delta pivot shows exactly the /usr a full pivot shows, staging a fraction of the bytes', async () => {
    const seen: Record<string, { digest: string; listing: string; facts: PullFacts; mount: string; status: string }> = {};
    for (const mode of ['full', 'delta'] as const) {
      const m = await machine(`delta-oracle-${mode}`, reshaped.ref, { staging: mode });
      try {
        const r = await m.exec([AGENT, 'run', '--no-isolate']);
        expect(r.exitCode, r.stderr).toBe(0);
        seen[mode] = {
          digest: await sh(m, USR_DIGEST),
          listing: await sh(m, "cd /usr && find share/doc share/common-licenses -printf './%p %y\\n'"),
          facts: await pullFacts(m),
          mount: await sh(m, 'findmnt -n -o FSTYPE,OPTIONS /usr'),
          status: (await m.exec([AGENT, 'status'])).stdout,
        };
        expect(await sh(m, 'cat /etc/motd')).toBe(LOCAL_MOTD);
      } finally {
        await m.dispose();
      }
    }
    const full = seen.full!;
    const delta = seen.delta!;
    expect(delta.digest).toBe(full.digest);
    expect(full.facts.stagingMode).toBe('full');
    expect(delta.facts.stagingMode).toBe('delta');
    expect(delta.facts.delta?.skipped).toBeGreaterThan(1000);
    // usr/share/doc/apt hidden by a whiteout; usr/share/common-licenses and usr/etc opaque.
    expect(delta.facts.delta?.whiteouts).toBeGreaterThanOrEqual(1);
    expect(delta.facts.delta?.opaqueDirs).toBeGreaterThanOrEqual(2);
    expect(delta.listing).toContain('./share/common-licenses/NIP-1.0 f');
    expect(delta.listing).not.toMatch(/^\.\/share\/doc\/apt /m);
    expect(delta.listing).not.toMatch(/^\.\/share\/common-licenses\/Apache-2\.0 /m);
    // The node layer is a few KiB; the booted /usr it shares is most of the 200 MB.
    expect(delta.facts.stagingUsedBytes!).toBeLessThan(full.facts.stagingUsedBytes! / 10);
    expect(delta.mount).toMatch(/^overlay ro,.*lowerdir=\/run\/node-image-pivot\/staging\/[0-9a-f]{64}\/usr:\/run\/node-image-pivot\/booted-usr/);
    expect(full.mount).not.toMatch(/^overlay/);
    expect(delta.status).toMatch(/^staging: delta, \d+ MiB in staging \(staging is "delta" in the config\)$/m);
    expect(full.status).toMatch(/^staging: full, \d+ MiB in staging \(staging is "full" in the config\)$/m);
  });

  it('a staging tmpfs that fills during the delta: exit 9 with the numbers, all old; with room the rerun pivots', async () => {
    // Room for the blobs (what the space check asks of a delta) but not for the blobs and the
    // 8 MiB the delta must hold as well.
    const sizeMiB = Math.ceil(bulky.layers.reduce((n, l) => n + l.size, 0) / MiB) + 3;
    const m = await machine('delta-enospc', bulky.ref, { staging: 'delta', stagingDir: '/var/tmp/small/staging', stagingTmpfs: 'off' });
    try {
      await sh(m, `mkdir -p /var/tmp/small && mount -t tmpfs -o size=${sizeMiB}M nip-small /var/tmp/small`);
      const etcBefore = await sh(m, "find /etc -xdev -printf '%p %y %m %s\\n' | LC_ALL=C sort | md5sum");
      const r = await m.exec([AGENT, 'run', '--no-isolate']);
      expect(r.exitCode, r.stderr).toBe(9);
      const state = JSON.parse(await sh(m, 'cat /run/node-image-pivot/state.json')) as { phases: Array<{ name: string; result: string }>; error: { line: string } };
      expect(state.error.line).toMatch(new RegExp(`^preflight: the staging filesystem at /var/tmp/small/staging \\(${sizeMiB} MiB, \\d+ MiB still used .*\\) filled up during the delta pull of \\d+ MiB compressed \\(ENOSPC\\)`));
      expect(state.error.line).toMatch(/Fix: give the node more RAM or point stagingDir at a larger filesystem/);
      expect(state.phases.at(-1)).toMatchObject({ name: 'pull', result: 'failed' });
      // All old: /usr is the booted one, /etc untouched, no half-built tree left to mount.
      expect(await sh(m, `test -e ${NODE_VERSION_FILE} && echo new || echo old`)).toBe('old\n');
      expect(await sh(m, `awk '$5 == "/usr"' /proc/self/mountinfo | wc -l`)).toBe('0\n');
      expect(await sh(m, "find /etc -xdev -printf '%p %y %m %s\\n' | LC_ALL=C sort | md5sum")).toBe(etcBefore);
      expect(await sh(m, 'ls /var/tmp/small/staging')).toBe('blobs\n');

      await sh(m, `mount -o remount,size=${sizeMiB + 64}M /var/tmp/small`);
      const again = await m.exec([AGENT, 'run', '--no-isolate']);
      expect(again.exitCode, again.stderr).toBe(0);
      expect(await sh(m, 'stat -c %s /usr/lib/nip-bulk.bin; test -e /run/node-image-pivot/booted-usr/lib/nip-bulk.bin && echo booted-has-it || echo booted-lacks-it')).toBe(`${8 * MiB}\nbooted-lacks-it\n`);
    } finally {
      await m.dispose();
    }
  });
});
