// The oracle on ostree-native images built by real `ostree commit`, against a booted deployment
// checked out by real `ostree checkout` (hardlinks into the booted repo): the object shortcut
// decides most paths by inode, and the merged view equals the full staging.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const child = join(import.meta.dirname, 'fixtures', 'ostree-oracle-child.ts');
const ready = process.getuid?.() === 0 && spawnSync('unshare', ['-m', '--propagation', 'private', 'true']).status === 0 && spawnSync('ostree', ['--version']).status === 0;
const base = mkdtempSync(join(tmpdir(), 'nip-delta-ostree-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

describe.skipIf(!ready)('delta staging oracle (ostree-native image, real ostree deployment, real overlayfs)', () => {
  it.each(['file', 'hardlink'] as const)('overlay(delta over the deployment) equals the full staging (.file-xattrs-link as %s)', (xattrsLink) => {
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', process.execPath, child, JSON.stringify({ base, xattrsLink })], {
      encoding: 'utf8', env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' },
    });
    expect(r.status, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as { full: string; merged: string; diff: string[]; fullEntries: number; deltaEntries: number; stats: { objectsInBootedRepo: number; skipped: number; contentCompared: number } };
    expect(report.diff).toEqual([]);
    expect(report.merged).toBe(report.full);
    // Most content objects are the booted repo's; their paths are decided by inode, unread.
    expect(report.stats.objectsInBootedRepo).toBeGreaterThan(150);
    expect(report.stats.skipped).toBeGreaterThan(report.stats.objectsInBootedRepo);
    expect(report.stats.contentCompared).toBeLessThan(10);
    expect(report.deltaEntries).toBeLessThan(report.fullEntries / 2);
  });
});
