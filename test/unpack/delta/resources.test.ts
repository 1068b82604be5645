// What delta staging is for, measured on real tmpfs mounts in `unshare -m`: an image that does
// not fit the staging tmpfs in full fits as a delta when it mostly matches the booted /usr; a
// delta that does not fit either fails with ENOSPC named; and comparing a large identical file
// holds no more of it in memory than a small one.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const child = join(import.meta.dirname, 'fixtures', 'resources-child.ts');
const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-m', '--propagation', 'private', 'true']).status === 0;
const base = mkdtempSync(join(tmpdir(), 'nip-delta-resources-'));
afterAll(() => rmSync(base, { recursive: true, force: true }));

function run(args: Record<string, unknown>): Record<string, unknown> {
  const r = spawnSync('unshare', ['-m', '--propagation', 'private', process.execPath, child, JSON.stringify({ base, ...args })], {
    encoding: 'utf8', env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' },
  });
  if (r.status !== 0) throw new Error(`resources child failed (${String(r.status)}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

describe.skipIf(!canUnshare)('delta staging resources (real tmpfs)', () => {
  const image = { mode: 'space', stagingMiB: 24, identicalMiB: 40 };
  it('48 MiB of image, 40 MiB of it booted: full staging runs out of a 24 MiB tmpfs, delta fits', () => {
    expect(run({ ...image, differentMiB: 8, staging: 'full' })).toMatchObject({ ok: false, kind: 'unpack', code: 'ENOSPC', isPivotError: true });
    expect(run({ ...image, differentMiB: 8, staging: 'delta' })).toMatchObject({ ok: true, stats: { skipped: 40, skippedBytes: 40 * 1024 * 1024 } });
  });

  it('a delta larger than the tmpfs fails with ENOSPC and the entry named', () => {
    expect(run({ ...image, differentMiB: 30, staging: 'delta' })).toMatchObject({ ok: false, kind: 'unpack', code: 'ENOSPC', path: expect.stringMatching(/^usr\/f10\d\d$/) });
  });

  it('comparing a 512 MiB identical file needs no more memory than a 16 MiB one, give or take the collector', () => {
    const small = run({ mode: 'memory', fileMiB: 16 }) as { skipped: number; maxRssMiB: number };
    const big = run({ mode: 'memory', fileMiB: 512 }) as { skipped: number; maxRssMiB: number };
    expect([small.skipped, big.skipped]).toEqual([1, 1]);
    // Buffering the file would add at least 512 MiB.
    expect(big.maxRssMiB - small.maxRssMiB).toBeLessThan(128);
  });
});
