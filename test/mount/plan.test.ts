import { describe, expect, it } from 'vitest';
import { mountArgv, planUsrMount, usrRelative, type PathFacts } from '../../src/mount.ts';
import { OVERLAY_MOUNT_UNIT } from '../../src/mount-ops.ts';
import { parseMountinfo, topMountAt } from '../../src/mountinfo.ts';
import { PivotError } from '../../src/errors.ts';
import { thrown } from '../helpers/thrown.ts';

const S = '/run/nip/staging/root';
const base: PathFacts = {
  [`${S}/usr`]: 'dir',
  '/usr': 'dir',
  '/usr/lib/modules': 'dir',
  [`${S}/usr/lib`]: 'dir',
  [`${S}/usr/lib/modules`]: 'dir',
};


describe('planUsrMount', () => {
  it('the new /usr takes the booted /usr\'s nosuid, nodev and noexec, whatever staging has', () => {
    const booted = { nosuid: false, nodev: true, noexec: false };
    const plan = planUsrMount({ stagedRoot: S }, base, booted);
    expect(plan.prepare.find((op) => op.op === 'remount-ro' && op.target === `${S}.mnt/usr`)).toEqual({ op: 'remount-ro', target: `${S}.mnt/usr`, access: booted });
  });

  it('assembles privately, binds the preserved path read-only, then switches with one move', () => {
    const plan = planUsrMount({ stagedRoot: S }, base);
    expect(plan.target).toBe('/usr');
    expect(plan.workDir).toBe(`${S}.mnt`);
    expect(plan.prepare).toEqual([
      { op: 'mkdir', path: `${S}.mnt/usr` },
      { op: 'bind', source: `${S}.mnt`, target: `${S}.mnt` },
      { op: 'make-private', target: `${S}.mnt` },
      { op: 'bind', source: `${S}/usr`, target: `${S}.mnt/usr` },
      { op: 'make-private', target: `${S}.mnt/usr` },
      { op: 'remount-ro', target: `${S}.mnt/usr`, access: { nosuid: false, nodev: false, noexec: false } },
      { op: 'bind', source: '/usr/lib/modules', target: `${S}.mnt/usr/lib/modules` },
      { op: 'make-private', target: `${S}.mnt/usr/lib/modules` },
      { op: 'remount-ro', target: `${S}.mnt/usr/lib/modules` },
    ]);
    expect(plan.switch).toEqual({ op: 'move', source: `${S}.mnt/usr`, target: '/usr' });
    expect(plan.finish).toEqual([{ op: 'umount', target: `${S}.mnt`, recursive: false, lazy: false }]);
    expect(plan.warnings).toEqual([]);
    // The visible switch is the only op that names the target as a mount target.
    expect(plan.prepare.filter((o) => 'target' in o && o.target === '/usr')).toEqual([]);
  });

  it('skips a preserve path missing from the booted /usr with a warning', () => {
    const plan = planUsrMount({ stagedRoot: S, preserve: ['/usr/lib/modules', '/usr/share/absent'] }, base);
    expect(plan.preserved.map((p) => p.path)).toEqual(['/usr/lib/modules']);
    expect(plan.warnings).toEqual(['preserve /usr/share/absent: missing in the booted /usr, skipped']);
  });

  it('creates missing mountpoints in the staged tree: directories, and an empty file for a file', () => {
    const facts: PathFacts = { [`${S}/usr`]: 'dir', '/usr': 'dir', '/usr/lib/modules': 'dir', '/usr/share/x/key.pem': 'file' };
    const plan = planUsrMount({ stagedRoot: S, preserve: ['/usr/lib/modules', '/usr/share/x/key.pem'] }, facts);
    expect(plan.prepare.filter((o) => o.op === 'mkdir' || o.op === 'touch').slice(0, 5)).toEqual([
      { op: 'mkdir', path: `${S}/usr/lib` },
      { op: 'mkdir', path: `${S}/usr/lib/modules` },
      { op: 'mkdir', path: `${S}/usr/share` },
      { op: 'mkdir', path: `${S}/usr/share/x` },
      { op: 'touch', path: `${S}/usr/share/x/key.pem` },
    ]);
  });

  it('drops a preserve path nested in another one, and dedupes', () => {
    const facts: PathFacts = { ...base, '/usr/lib/modules/extra': 'dir' };
    const plan = planUsrMount({ stagedRoot: S, preserve: ['/usr/lib/modules/extra', '/usr/lib/modules', '/usr/lib/modules/'] }, facts);
    expect(plan.preserved.map((p) => p.path)).toEqual(['/usr/lib/modules']);
    expect(plan.warnings).toEqual(['preserve /usr/lib/modules/extra is inside /usr/lib/modules, which is preserved already']);
  });

  it('refuses a staged symlink on the way to a mountpoint (a mount would follow it out)', () => {
    const e = thrown(() => planUsrMount({ stagedRoot: S }, { ...base, [`${S}/usr/lib`]: 'symlink' }));
    expect(e.kind).toBe('mount');
    expect(e.exitCode).toBe(6);
    expect(e.path).toBe(`${S}/usr/lib`);
    expect(e.fix).toMatch(/remove \/usr\/lib\/modules from preserve/);
  });

  it('refuses a type mismatch between the booted and the staged path', () => {
    const e = thrown(() => planUsrMount({ stagedRoot: S }, { ...base, [`${S}/usr/lib/modules`]: 'file' }));
    expect(e.kind).toBe('mount');
    expect(e.message).toMatch(/dir in the booted \/usr but the staged path is a file/);
  });

  it('refuses a staged tree without usr/, a non-directory target and overlapping paths', () => {
    expect(thrown(() => planUsrMount({ stagedRoot: S }, { ...base, [`${S}/usr`]: 'missing' })).path).toBe(`${S}/usr`);
    expect(thrown(() => planUsrMount({ stagedRoot: S }, { ...base, '/usr': 'file' })).path).toBe('/usr');
    expect(thrown(() => planUsrMount({ stagedRoot: S, workDir: `${S}/mnt` }, base)).message).toMatch(/workDir overlaps/);
    expect(thrown(() => planUsrMount({ stagedRoot: '/usr/x' }, { ...base, '/usr/x/usr': 'dir' })).message).toMatch(/target overlaps/);
  });

  it('refuses relative paths and preserve paths outside /usr', () => {
    expect(thrown(() => planUsrMount({ stagedRoot: 'staging' }, base)).kind).toBe('usage');
    const e = thrown(() => planUsrMount({ stagedRoot: S, preserve: ['/etc/passwd'] }, base));
    expect(e).toMatchObject({ kind: 'config', field: 'preserve' });
    expect(() => usrRelative('/usr')).toThrow(PivotError);
    expect(() => usrRelative('/usr/../etc')).toThrow(PivotError);
    expect(usrRelative('/usr/lib//modules/')).toBe('lib/modules');
  });

  it('overlay mode stacks the staged usr over the target and needs no staged mountpoints', () => {
    const facts: PathFacts = { [`${S}/usr`]: 'dir', '/usr': 'dir', '/usr/lib/modules': 'dir' };
    const plan = planUsrMount({ stagedRoot: S, mode: 'overlay' }, facts);
    expect(plan.prepare.some((o) => o.op === 'mkdir' && o.path.startsWith(`${S}/`))).toBe(false);
    expect(plan.prepare).toContainEqual({ op: 'overlay', lowerdirs: [`${S}/usr`, '/usr'], target: `${S}.mnt/usr` });
    expect(thrown(() => planUsrMount({ stagedRoot: '/run/a:b', mode: 'overlay' }, { '/run/a:b/usr': 'dir', '/usr': 'dir' })).message)
      .toMatch(/cannot contain/);
  });

  it('overlay mode hands the overlay to PID 1\'s context when one is given; a bind never is', () => {
    const facts: PathFacts = { [`${S}/usr`]: 'dir', '/usr': 'dir' };
    const ctx = 'system_u:system_r:init_t:s0';
    const overlay = planUsrMount({ stagedRoot: S, mode: 'overlay', overlayMounterContext: ctx }, facts).prepare.find((o) => o.op === 'overlay');
    expect(overlay).toEqual({ op: 'overlay', lowerdirs: [`${S}/usr`, '/usr'], target: `${S}.mnt/usr`, mounter: { context: ctx, unit: OVERLAY_MOUNT_UNIT } });
    const bind = planUsrMount({ stagedRoot: S, overlayMounterContext: ctx }, { ...facts, '/usr/lib/modules': 'dir' });
    expect(JSON.stringify(bind.prepare)).not.toContain(ctx);
  });
});

describe('mountArgv', () => {
  it('builds util-linux argv', () => {
    expect(mountArgv({ op: 'bind', source: '/a', target: '/b' })).toEqual(['mount', ['--bind', '/a', '/b']]);
    expect(mountArgv({ op: 'remount-ro', target: '/b' })).toEqual(['mount', ['-o', 'remount,bind,ro', '/b']]);
    // The new /usr's access flags are set, never inherited from the staging filesystem.
    expect(mountArgv({ op: 'remount-ro', target: '/b', access: { nosuid: false, nodev: false, noexec: false } }))
      .toEqual(['mount', ['-o', 'remount,bind,ro,suid,dev,exec', '/b']]);
    expect(mountArgv({ op: 'remount-ro', target: '/b', access: { nosuid: true, nodev: true, noexec: false } }))
      .toEqual(['mount', ['-o', 'remount,bind,ro,nosuid,nodev,exec', '/b']]);
    expect(mountArgv({ op: 'make-private', target: '/b' })).toEqual(['mount', ['--make-private', '/b']]);
    expect(mountArgv({ op: 'move', source: '/w/usr', target: '/usr' })).toEqual(['mount', ['--move', '/w/usr', '/usr']]);
    expect(mountArgv({ op: 'overlay', lowerdirs: ['/d', '/usr'], target: '/w/usr' }))
      .toEqual(['mount', ['-t', 'overlay', 'overlay', '-o', 'ro,lowerdir=/d:/usr', '/w/usr']]);
    // PID 1 mounts it (transient unit, its own domain kept); mount's argv is the same after `--`.
    expect(mountArgv({ op: 'overlay', lowerdirs: ['/d', '/usr'], target: '/w/usr', mounter: { context: 'u:r:init_t:s0', unit: 'nip-o.service' } }))
      .toEqual(['systemd-run', ['--wait', '--collect', '--service-type=exec', '--unit=nip-o.service', '--property=DefaultDependencies=no',
        '--property=SELinuxContext=u:r:init_t:s0', '--', 'mount', '-t', 'overlay', 'overlay', '-o', 'ro,lowerdir=/d:/usr', '/w/usr']]);
    expect(mountArgv({ op: 'umount', target: '/usr', recursive: true, lazy: true })).toEqual(['umount', ['--recursive', '--lazy', '/usr']]);
    expect(mountArgv({ op: 'mkdir', path: '/x' })).toBeUndefined();
  });
});

describe('mountinfo', () => {
  const text = [
    '22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw',
    '40 22 254:0 /usr /usr ro,relatime shared:5 - ext4 /dev/vda rw',
    '41 40 254:0 /run/s/usr /usr ro,relatime shared:9 - ext4 /dev/vda rw',
    '42 41 254:0 /usr/lib/modules /usr/lib/modules ro - ext4 /dev/vda rw',
    '43 22 0:50 / /tmp/with\\040space rw - tmpfs tmpfs rw',
    'garbage',
  ].join('\n');
  it('parses fields and octal escapes, skipping malformed lines', () => {
    const e = parseMountinfo(text);
    expect(e).toHaveLength(5);
    expect(e[4]).toMatchObject({ mountPoint: '/tmp/with space', fsType: 'tmpfs', source: 'tmpfs' });
    expect(e[2]).toMatchObject({ id: 41, parent: 40, root: '/run/s/usr', options: 'ro,relatime', fsType: 'ext4' });
  });
  it('finds the mount on top of a stack', () => {
    expect(topMountAt(parseMountinfo(text), '/usr')?.id).toBe(41);
    expect(topMountAt(parseMountinfo(text), '/nope')).toBeUndefined();
  });
});
