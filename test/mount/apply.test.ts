// Real mounts, but only inside `unshare -m --propagation private` children, on temp dirs and a
// fake /usr. The host mount table is compared before and after every scenario.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseMountinfo } from '../../src/mountinfo.ts';

const child = join(import.meta.dirname, 'fixtures', 'ns-child.ts');

function canUnshare(): boolean {
  if (process.getuid?.() !== 0) return false;
  return spawnSync('unshare', ['-m', '--propagation', 'private', 'true']).status === 0;
}

let root: string;
let hostMountinfo: string[];

/** Our part of the host mount table: the temp dir and /usr. Other helpers' mounts come and go. */
function hostMounts(): string[] {
  return parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8'))
    .filter((e) => e.mountPoint.startsWith(tmpdir()) || e.mountPoint === '/usr' || e.mountPoint.startsWith('/usr/'))
    .filter((e) => !e.mountPoint.startsWith(tmpdir()) || e.mountPoint.includes('nip-mount-'))
    .map((e) => `${e.id} ${e.mountPoint} ${e.options}`);
}

function write(path: string, text: string): void {
  mkdirSync(join(path, '..'), { recursive: true });
  writeFileSync(path, text);
}

beforeEach(() => {
  hostMountinfo = hostMounts();
  root = mkdtempSync(join(tmpdir(), 'nip-mount-'));
  // The fake booted /usr.
  write(join(root, 'usr/bin/old-only'), 'old');
  write(join(root, 'usr/bin/both'), 'old');
  write(join(root, 'usr/lib/modules/6.1.0/kernel.ko'), 'booted-modules');
  write(join(root, 'usr/lib/firmware/fw.bin'), 'booted-firmware');
  // The staged image: no lib/modules at all (the mountpoint must be created), different bin/.
  write(join(root, 'staged/usr/bin/new-only'), 'new');
  write(join(root, 'staged/usr/bin/both'), 'new');
  write(join(root, 'staged/usr/lib/os-release'), 'ID=node');
});

afterEach(() => {
  rmSync(root, { recursive: true, force: true });
  // Nothing made in a child namespace may leak into ours.
  expect(hostMounts()).toEqual(hostMountinfo);
});

interface Report {
  before: Record<string, string | null>;
  after?: Record<string, string | null>;
  afterUndo?: Record<string, string | null>;
  afterError?: Record<string, string | null>;
  writes?: Record<string, string>;
  pivoted?: boolean;
  pivotedAfterUndo?: boolean;
  topOptions?: string;
  bootedOptions?: string;
  undo?: string;
  warnings?: string[];
  error?: { kind: string; exitCode: number; path?: string; fix: string; message: string; line: string };
  mountsAfterSwitch?: string[];
  mountsAtEnd: string[];
  facts?: Record<string, unknown>;
}

function runInNamespace(scenario: Record<string, unknown>, env: Record<string, string> = {}): Report {
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', process.execPath, child, JSON.stringify({ root, ...scenario })], {
    encoding: 'utf8',
    env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn', ...env },
  });
  if (r.status !== 0) throw new Error(`child failed (${String(r.status)}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Report;
}

const probes = {
  read: ['bin/new-only', 'bin/old-only', 'bin/both', 'lib/modules/6.1.0/kernel.ko', 'lib/firmware/fw.bin'],
  write: ['bin/written', 'lib/modules/written'],
};

describe.skipIf(!canUnshare())('applyUsrMount in a private mount namespace', () => {
  it('switches the target to the staged usr, keeps the preserved path and is read-only; undo restores', () => {
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'staged'), target: join(root, 'usr'), preserve: ['/usr/lib/modules', '/usr/lib/nope'] },
      sharedParent: root, probes, undo: true,
    });
    expect(r.error).toBeUndefined();
    expect(r.before).toMatchObject({ 'bin/new-only': null, 'bin/both': 'old' });
    expect(r.after).toEqual({
      'bin/new-only': 'new', 'bin/old-only': null, 'bin/both': 'new',
      'lib/modules/6.1.0/kernel.ko': 'booted-modules', 'lib/firmware/fw.bin': null,
    });
    expect(r.writes).toEqual({ 'bin/written': 'EROFS', 'lib/modules/written': 'EROFS' });
    expect(r.pivoted).toBe(true);
    expect(r.topOptions?.split(',')).toContain('ro');
    expect(r.warnings).toEqual([expect.stringMatching(/\/usr\/lib\/nope: missing .*skipped/)]);
    // One mount at the target plus the preserved one inside it; the work area is gone.
    expect(r.mountsAfterSwitch).toEqual(['/usr', '/usr/lib/modules']);
    expect(r.undo).toBe('clean');
    expect(r.afterUndo).toEqual(r.before);
    expect(r.pivotedAfterUndo).toBe(false);
    expect(r.mountsAtEnd).toEqual([]);
  });

  it('staged on a nosuid,nodev,noexec filesystem (as /run is), the new /usr still runs programs like the booted one', () => {
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'staged'), target: join(root, 'usr'), preserve: ['/usr/lib/modules'] },
      sharedParent: root, probes, undo: true, stagingFlags: 'nosuid,nodev,noexec',
    });
    expect(r.error).toBeUndefined();
    expect(r.after?.['bin/new-only']).toBe('new');
    const flags = (o: string | undefined): string[] => (o ?? '').split(',').filter((f) => ['ro', 'nosuid', 'nodev', 'noexec'].includes(f));
    // The fake booted /usr lives on the test's temp filesystem: whatever it allows, the new /usr allows.
    expect(flags(r.topOptions)).toEqual(flags(`ro,${r.bootedOptions ?? ''}`).filter((f, i, a) => a.indexOf(f) === i));
    expect(flags(r.topOptions)).not.toContain('noexec');
    expect(r.pivotedAfterUndo).toBe(false);
  });

  it('mountStagedUsr (the pivot phase) switches, reports facts, and its undo restores', () => {
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'staged'), target: join(root, 'usr'), preserve: ['/usr/lib/modules'] },
      sharedParent: root, probes, undo: true, viaPhase: true,
    });
    expect(r.error).toBeUndefined();
    expect(r.after?.['lib/modules/6.1.0/kernel.ko']).toBe('booted-modules');
    expect(r.after?.['bin/new-only']).toBe('new');
    expect(r.facts).toEqual({ target: join(root, 'usr'), mode: 'bind', preserved: ['/usr/lib/modules'], warnings: [] });
    expect(r.pivoted).toBe(true);
    expect(r.afterUndo).toEqual(r.before);
    expect(r.pivotedAfterUndo).toBe(false);
    expect(r.mountsAtEnd).toEqual([]);
  });

  it('a failure between prepare and switch (mount.switch) leaves the target untouched and no mounts', () => {
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'staged'), target: join(root, 'usr') },
      sharedParent: root, probes, undo: false,
    }, { NODE_IMAGE_PIVOT_FAILPOINTS: 'mount.switch:error' });
    expect(r.error).toMatchObject({ kind: 'mount', exitCode: 6, path: join(root, 'usr') });
    expect(r.error?.message).toMatch(/failpoint mount.switch/);
    expect(r.afterError).toEqual(r.before);
    expect(r.mountsAtEnd).toEqual([]);
  });

  it('a failure in the middle of prepare (5th mount.prepare hit, after the work area is mounted) releases what was assembled', () => {
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'staged'), target: join(root, 'usr') },
      sharedParent: root, probes, undo: false,
    }, { NODE_IMAGE_PIVOT_FAILPOINTS: 'mount.prepare:error@5' });
    expect(r.error).toMatchObject({ kind: 'mount', exitCode: 6 });
    expect(r.afterError).toEqual(r.before);
    expect(r.mountsAtEnd).toEqual([]);
  });

  it('a failure after the switch (mount.switched) is undone and reported as a mount error', () => {
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'staged'), target: join(root, 'usr') },
      sharedParent: root, probes, undo: false,
    }, { NODE_IMAGE_PIVOT_FAILPOINTS: 'mount.switched:error' });
    expect(r.error).toMatchObject({ kind: 'mount', exitCode: 6, path: join(root, 'usr') });
    expect(r.afterError).toEqual(r.before);
    expect(r.mountsAtEnd).toEqual([]);
  });

  it('a failing undo (mount.undo) reports the manual fix and leaves the switch in place', () => {
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'staged'), target: join(root, 'usr') },
      sharedParent: root, probes, undo: true,
    }, { NODE_IMAGE_PIVOT_FAILPOINTS: 'mount.undo:error' });
    expect(r.after?.['bin/new-only']).toBe('new');
    expect(r.error).toMatchObject({ kind: 'mount', exitCode: 6 });
    expect(r.error?.fix).toMatch(/umount -R -l/);
  });

  it('refuses a staged mountpoint that is a symlink, before mounting anything', () => {
    rmSync(join(root, 'staged/usr/lib'), { recursive: true });
    execFileSync('ln', ['-s', '/etc', join(root, 'staged/usr/lib')]);
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'staged'), target: join(root, 'usr') }, probes, undo: false,
    });
    expect(r.error).toMatchObject({ kind: 'mount', path: join(root, 'staged/usr/lib') });
    expect(r.error?.message).toMatch(/symlink/);
    expect(r.afterError).toEqual(r.before);
    expect(r.mountsAtEnd).toEqual([]);
  });

  it('overlay mode stacks the staged usr as a delta over the booted one', () => {
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'staged'), target: join(root, 'usr'), mode: 'overlay' },
      sharedParent: root, probes, undo: true,
    });
    expect(r.error).toBeUndefined();
    expect(r.after).toEqual({
      'bin/new-only': 'new', 'bin/old-only': 'old', 'bin/both': 'new',
      'lib/modules/6.1.0/kernel.ko': 'booted-modules', 'lib/firmware/fw.bin': 'booted-firmware',
    });
    expect(r.writes).toEqual({ 'bin/written': 'EROFS', 'lib/modules/written': 'EROFS' });
    expect(r.pivoted).toBe(true);
    expect(r.afterUndo).toEqual(r.before);
    expect(r.mountsAtEnd).toEqual([]);
  });
});

describe.skipIf(!canUnshare())('against the real /usr, inside a private mount namespace only', () => {
  it('overlay mode shows a delta over /usr there, keeps modules, undoes, and the host /usr never changes', () => {
    write(join(root, 'delta/usr/bin/nip-namespace-marker'), 'delta');
    const r = runInNamespace({
      input: { stagedRoot: join(root, 'delta'), target: '/usr', mode: 'overlay' },
      // No write probes: a write must never be attempted where the host /usr could receive it.
      probes: { read: ['bin/nip-namespace-marker'], write: [] },
      undo: true,
    });
    expect(r.error).toBeUndefined();
    expect(r.before).toEqual({ 'bin/nip-namespace-marker': null });
    expect(r.after).toEqual({ 'bin/nip-namespace-marker': 'delta' });
    expect(r.pivoted).toBe(true);
    expect(r.topOptions?.split(',')).toContain('ro');
    // umount itself runs from the overlaid /usr, so the unmount may have to be a lazy detach.
    expect(['clean', 'lazy']).toContain(r.undo);
    expect(r.afterUndo).toEqual(r.before);
    expect(r.pivotedAfterUndo).toBe(false);
    // Out here nothing happened (afterEach also compares the whole mount table).
    expect(existsSync('/usr/bin/nip-namespace-marker')).toBe(false);
  });
});
