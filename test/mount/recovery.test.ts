// src/mount-recovery.ts: which mounts are the agent's leftovers, when the booted-usr bind may be
// reused (pure, on mountinfo text), and a staging delete that never crosses a mount point (real).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseMountinfo, viewAt } from '../../src/mountinfo.ts';
import { bootedUsrProblem, isLeftoverMountPoint, nextLeftover, type OwnMounts } from '../../src/mount-recovery.ts';

const HEX = 'b'.repeat(64);
const own: OwnMounts = { usr: '/usr', bootedUsr: '/run/nip/booted-usr', assembly: '/run/nip/usr-assembly', stagingDir: '/run/nip/staging' };
const line = (id: number, parent: number, dev: string, root: string, at: string, opts: string, optional = ''): string =>
  `${id} ${parent} ${dev} ${root} ${at} ${opts} ${optional ? `${optional} ` : ''}- ext4 /dev/vda1 rw`;
const base = [line(1, 0, '8:1', '/', '/', 'rw,relatime', 'shared:1'), line(2, 1, '0:22', '/', '/run', 'rw', 'shared:5')];

describe('leftover mounts', () => {
  it('are the assembly area and digest-named staging entries, never booted-usr, staging itself or others', () => {
    expect(isLeftoverMountPoint(own, '/run/nip/usr-assembly')).toBe(true);
    expect(isLeftoverMountPoint(own, '/run/nip/usr-assembly/usr/lib/modules')).toBe(true);
    expect(isLeftoverMountPoint(own, `/run/nip/staging/${HEX}.mnt/usr`)).toBe(true);
    expect(isLeftoverMountPoint(own, `/run/nip/staging/${HEX}`)).toBe(true);
    for (const p of ['/run/nip/booted-usr', '/run/nip/staging', '/run/nip/staging/blobs', '/run/nip/staging/other', '/run/nip/usr-assembly2', '/usr']) {
      expect(isLeftoverMountPoint(own, p), p).toBe(false);
    }
  });

  it('go deepest first', () => {
    const e = parseMountinfo([...base,
      line(10, 2, '0:22', '/run/nip/usr-assembly', '/run/nip/usr-assembly', 'rw'),
      line(11, 10, '8:1', '/x/usr', '/run/nip/usr-assembly/usr', 'ro'),
      line(12, 11, '8:1', '/usr/lib/modules', '/run/nip/usr-assembly/usr/lib/modules', 'ro'),
      line(13, 2, '8:1', '/usr', '/run/nip/booted-usr', 'ro'),
    ].join('\n'));
    expect(nextLeftover(e, own)).toBe('/run/nip/usr-assembly/usr/lib/modules');
    expect(nextLeftover(e.filter((m) => m.id !== 12), own)).toBe('/run/nip/usr-assembly/usr');
    expect(nextLeftover(e.filter((m) => m.id === 13 || m.id < 10), own)).toBeUndefined();
  });
});

describe('bootedUsrProblem', () => {
  const at = (opts: string, optional = '', root = '/usr', dev = '8:1'): string => line(13, 2, dev, root, '/run/nip/booted-usr', opts, optional);
  const check = (...lines: string[]): string | undefined => bootedUsrProblem(parseMountinfo([...base, ...lines].join('\n')), own);

  it('accepts one read-only private bind of what /usr shows', () => {
    expect(check(at('ro,relatime'))).toBeUndefined();
    // With /usr a mount of its own, the bind must show that one.
    expect(check(line(3, 1, '8:2', '/', '/usr', 'ro', 'shared:2'), at('ro', '', '/', '8:2'))).toBeUndefined();
    expect(viewAt(parseMountinfo(base.join('\n')), '/usr')).toEqual({ device: '8:1', root: '/usr' });
  });

  it('refuses a writable, a shared, a stacked or a foreign bind, and reports none', () => {
    expect(check()).toBe('absent');
    expect(check(at('rw'))).toBe('it is writable');
    expect(check(at('ro', 'shared:1'))).toMatch(/not private \(shared:1\)/);
    expect(check(at('ro'), line(14, 13, '8:1', '/usr', '/run/nip/booted-usr', 'ro'))).toMatch(/2 mounts are stacked/);
    expect(check(at('ro', '', `/run/nip/staging/${HEX}/usr`))).toMatch(/not the booted \/usr \(8:1:\/usr\)/);
    expect(check(at('ro', '', '/usr', '0:22'))).toMatch(/shows 0:22:\/usr/);
  });
});

const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-m', '--propagation', 'private', 'true']).status === 0;

describe.runIf(canUnshare)('removeTreeWithinMount', () => {
  it('refuses a tree with a mount point inside, deleting nothing; without one it deletes all', () => {
    const root = mkdtempSync(join(tmpdir(), 'nip-rmtree-'));
    try {
      const victim = join(root, 'elsewhere');
      mkdirSync(victim);
      writeFileSync(join(victim, 'precious'), 'keep');
      mkdirSync(join(root, 'tree/a/bind'), { recursive: true });
      writeFileSync(join(root, 'tree/a/file'), 'x');
      const mod = JSON.stringify(join(import.meta.dirname, '../../src/mount-recovery.ts'));
      const script = `mount --bind ${victim} ${join(root, 'tree/a/bind')}
${process.execPath} --input-type=module -e "import { removeTreeWithinMount } from ${mod.replace(/"/g, '\\"')};
try { removeTreeWithinMount('${join(root, 'tree')}'); console.log('deleted'); } catch (e) { console.log(e.kind, e.path); }"`;
      const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], { encoding: 'utf8' });
      expect(r.stdout.trim()).toBe(`mount ${join(root, 'tree/a/bind')}`);
      expect(existsSync(join(victim, 'precious'))).toBe(true);
      expect(existsSync(join(root, 'tree/a/file'))).toBe(true);
      // Positive control: outside that namespace nothing is mounted there, and the delete works.
      const ok = spawnSync(process.execPath, ['--input-type=module', '-e', `import { removeTreeWithinMount } from ${mod}; removeTreeWithinMount(${JSON.stringify(join(root, 'tree'))});`], { encoding: 'utf8' });
      expect(ok.status, ok.stderr).toBe(0);
      expect(existsSync(join(root, 'tree'))).toBe(false);
      expect(existsSync(join(victim, 'precious'))).toBe(true);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
