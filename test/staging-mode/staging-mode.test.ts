import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseMountinfo } from '../../src/mountinfo.ts';
import { chooseStaging, decideStaging, probeOverlayStacking, rootInRam, stackProbeArgv, type RootFacts } from '../../src/staging-mode.ts';

const line = (id: number, parent: number, mountPoint: string, fsType: string, superOptions = 'rw', source = 'none'): string =>
  `${id} ${parent} 0:${id} / ${mountPoint} rw,relatime shared:${id} - ${fsType} ${source} ${superOptions}`;
const facts = (lines: string[], ostreeLive = false): RootFacts => ({ ostreeLive, mountinfo: parseMountinfo(lines.join('\n')) });

const disk = facts([line(1, 0, '/', 'xfs', 'rw', '/dev/vda4'), line(2, 1, '/run', 'tmpfs')]);
const tmpfsRoot = facts([line(1, 0, '/', 'tmpfs')]);
const liveOverlay = facts([
  line(1, 0, '/', 'overlay', 'rw,lowerdir=/run/rootfsbase,upperdir=/run/overlayfs,workdir=/run/ovlwork', 'overlay'),
  line(2, 1, '/run', 'tmpfs'),
]);
const composefs = facts([line(1, 0, '/', 'overlay', 'ro,lowerdir+=/run/ostree/.private/cfsroot-lower,datadir+=/sysroot/ostree/repo/objects', 'composefs')]);
const overlayOnDisk = facts([line(1, 0, '/', 'overlay', 'rw,lowerdir=/lower,upperdir=/var/upper,workdir=/var/work', 'overlay'), line(2, 1, '/var', 'xfs', 'rw', '/dev/vda4')]);

describe('rootInRam', () => {
  it.each([
    ['/run/ostree-live', facts([line(1, 0, '/', 'xfs')], true), true, /ostree-live exists/],
    ['/ on tmpfs', tmpfsRoot, true, /\/ is tmpfs/],
    ['/ an overlay with its upper on tmpfs', liveOverlay, true, /upperdir \/run\/overlayfs is on tmpfs/],
    ['/ on disk', disk, false, /\/ is xfs/],
    ['/ a read-only overlay (composefs)', composefs, false, /read-only overlay/],
    ['/ an overlay with its upper on disk', overlayOnDisk, false, /upperdir \/var\/upper is on xfs/],
  ])('%s', (_what, f, inRam, why) => {
    const r = rootInRam(f);
    expect(r.inRam).toBe(inRam);
    expect(r.why).toMatch(why);
  });

  it('judges the top mount when several are stacked at /', () => {
    expect(rootInRam(facts([line(1, 0, '/', 'xfs'), line(2, 1, '/', 'tmpfs')])).inRam).toBe(true);
    expect(rootInRam(facts([line(1, 0, '/', 'tmpfs'), line(2, 1, '/', 'xfs')])).inRam).toBe(false);
  });

  it('finds the upperdir on the deepest mount holding it, even with a comma in its path', () => {
    const f = facts([line(1, 0, '/', 'overlay', 'rw,lowerdir=/l,upperdir=/run/a\\054b/up,workdir=/run/w', 'overlay'), line(2, 1, '/run', 'xfs'), line(3, 2, '/run/a,b', 'tmpfs')]);
    expect(rootInRam(f)).toEqual({ inRam: true, why: '/ is an overlay whose upperdir /run/a,b/up is on tmpfs' });
  });
});

describe('chooseStaging / decideStaging', () => {
  it('full and delta are taken as configured; auto follows the root', () => {
    expect(chooseStaging('full', tmpfsRoot).mode).toBe('full');
    expect(chooseStaging('delta', disk).mode).toBe('delta');
    expect(chooseStaging('auto', liveOverlay)).toMatchObject({ mode: 'delta', reason: expect.stringMatching(/root lives in RAM/) });
    expect(chooseStaging('auto', disk)).toMatchObject({ mode: 'full', reason: expect.stringMatching(/not in RAM \(\/ is xfs\)/) });
  });

  it('falls back to full with the kernel\'s reason when the overlay cannot be stacked, and probes only for delta', () => {
    let probes = 0;
    const refused = (): { ok: false; why: string } => { probes++; return { ok: false, why: 'stacking depth' }; };
    expect(decideStaging('auto', liveOverlay, refused)).toEqual({
      mode: 'full', fellBack: true, reason: expect.stringMatching(/root lives in RAM.*; falling back to full staging: stacking depth$/),
    });
    expect(decideStaging('delta', disk, () => ({ ok: true }))).toMatchObject({ mode: 'delta', fellBack: false });
    expect(decideStaging('auto', disk, refused)).toMatchObject({ mode: 'full', fellBack: false });
    expect(decideStaging('full', liveOverlay, refused)).toMatchObject({ mode: 'full', fellBack: false });
    expect(probes).toBe(1);
  });
});

describe('stackProbeArgv', () => {
  it('mounts in the agent\'s own domain under SELinux (runcon inside unshare), plainly without', () => {
    const ctx = 'system_u:system_r:initrc_t:s0';
    const withSelinux = stackProbeArgv('/usr', '/run/p/stack-probe-x', ctx);
    expect(withSelinux.slice(0, 7)).toEqual(['unshare', '-m', '--propagation', 'private', 'runcon', ctx, 'mount']);
    expect(withSelinux.slice(7)).toEqual(['-t', 'overlay', '-o', 'ro,lowerdir=/run/p/stack-probe-x/top:/usr', 'overlay', '/run/p/stack-probe-x/mnt']);
    expect(stackProbeArgv('/usr', '/s', undefined)).toEqual(['unshare', '-m', '--propagation', 'private', 'mount', '-t', 'overlay', '-o', 'ro,lowerdir=/s/top:/usr', 'overlay', '/s/mnt']);
  });
});

const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-m', '--propagation', 'private', 'true']).status === 0;

describe.skipIf(!canUnshare)('probeOverlayStacking (real overlayfs in unshare -m)', () => {
  it('accepts a plain and a one-level overlay below, refuses a two-level one, and leaves nothing mounted', () => {
    const base = mkdtempSync(join(tmpdir(), 'nip-stacking-'));
    try {
      const r = spawnSync('unshare', ['-m', '--propagation', 'private', process.execPath, join(import.meta.dirname, 'fixtures', 'stacking-child.ts'), base], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const report = JSON.parse(r.stdout) as Record<string, unknown>;
      expect(report.plain).toEqual({ ok: true });
      expect(report.depth1).toEqual({ ok: true });
      expect(report.depth2).toMatchObject({ ok: false, why: expect.stringMatching(/kernel refused an overlay over .*\/B/) });
      expect(report.scratchLeft).toEqual([]);
      expect(report.probeMounts).toEqual([]);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });

  // On this SELinux-less host runcon cannot enter any context: the probe must say so and count as
  // a refusal (auto falls back to full), not pass by skipping the trial mount.
  it.skipIf(existsSync('/sys/fs/selinux/enforce'))('a trial mount that cannot start in the given domain is a refusal that names why', () => {
    const base = mkdtempSync(join(tmpdir(), 'nip-stacking-'));
    try {
      const r = probeOverlayStacking('/usr', join(base, 'scratch'), 'system_u:system_r:initrc_t:s0');
      expect(r).toMatchObject({ ok: false, why: expect.stringMatching(/kernel refused an overlay over \/usr \(runcon: /) });
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});
