// The space check before staging counts what the pull phase will reclaim: leftovers of an
// interrupted run (`<digest>.unpacked`) and other images' trees, and the blobs it cached already
// (part of what the check asks room for), never the tree of the image being staged. Found in the VM bed: a retry after a failed unpack on a live
// ISO was refused for room the pull was about to free.
import { linkSync, mkdirSync, mkdtempSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spaceShortfall } from '../src/pivot-rules.ts';
import { parseConfig } from '../src/config.ts';
import { reclaimableStagingBytes, stagingRoom } from '../src/staging.ts';

const MiB = 1024 ** 2;
const DIGEST_HEX = 'a'.repeat(64);

describe('reclaimableStagingBytes', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'nip-staging-space-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('is 0 for a missing or empty staging dir', () => {
    expect(reclaimableStagingBytes(join(dir, 'missing'), [])).toBe(0);
    expect(reclaimableStagingBytes(dir, ['blobs'])).toBe(0);
  });

  it('counts leftovers once per inode, and never the blob cache or the image being staged', () => {
    for (const d of ['blobs', DIGEST_HEX, `${DIGEST_HEX}.unpacked/usr`, 'b'.repeat(64)]) mkdirSync(join(dir, d), { recursive: true });
    writeFileSync(join(dir, 'blobs', 'layer'), Buffer.alloc(4 * MiB, 1));
    writeFileSync(join(dir, DIGEST_HEX, 'tree'), Buffer.alloc(4 * MiB, 1));
    writeFileSync(join(dir, `${DIGEST_HEX}.unpacked/usr`, 'half'), Buffer.alloc(1 * MiB, 1));
    writeFileSync(join(dir, 'b'.repeat(64), 'old'), Buffer.alloc(2 * MiB, 1));
    linkSync(join(dir, 'b'.repeat(64), 'old'), join(dir, 'b'.repeat(64), 'old-hardlink'));
    const bytes = reclaimableStagingBytes(dir, ['blobs', DIGEST_HEX]);
    expect(bytes).toBeGreaterThanOrEqual(3 * MiB);
    expect(bytes).toBeLessThan(3.5 * MiB);
  });

  it('turns a refusal into a pass when the leftovers make the room', () => {
    mkdirSync(join(dir, `${DIGEST_HEX}.unpacked`));
    writeFileSync(join(dir, `${DIGEST_HEX}.unpacked`, 'half'), Buffer.alloc(2 * MiB, 1));
    const available = 1 * MiB;
    expect(spaceShortfall(available, 1 * MiB, 2)).toMatch(/^staging needs 2 MiB/);
    expect(spaceShortfall(available + reclaimableStagingBytes(dir, ['blobs', DIGEST_HEX]), 1 * MiB, 2)).toBeUndefined();
  });

  it('stagingRoom counts the verified blobs already cached: a rerun after a pull that filled the staging fs is not refused for them', async () => {
    const cfg = parseConfig({ image: 'reg.example/node:1', stagingDir: dir, stagingTmpfs: 'off' }, 'test');
    mkdirSync(join(dir, 'blobs'));
    writeFileSync(join(dir, 'blobs', 'layer'), Buffer.alloc(64 * MiB, 1));
    const room = (await stagingRoom(cfg, join(dir, DIGEST_HEX))).freeBytes;
    const s = statfsSync(dir);
    // The filesystem's free space, read right after, plus the cached 64 MiB (other tests may
    // write to the same filesystem meanwhile, hence the slack).
    expect(room - Number(s.bavail) * Number(s.bsize)).toBeGreaterThan(60 * MiB);
    expect(room - Number(s.bavail) * Number(s.bsize)).toBeLessThan(70 * MiB);
  });
});
