// Ground truth: the same image unpacked by umoci (as root) and by us must give identical trees,
// except for the deliberate differences listed in docs/unpack.md.
import { execFileSync } from 'node:child_process';
import { createReadStream, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unpackLayers, type LayerSource } from '../../src/unpack/index.ts';
import { buildOciLayout } from '../helpers/oci-image.ts';
import { compareTrees } from '../helpers/tree-compare.ts';
import { fixtureLayers } from './fixture-image.ts';
import { GZIP, ZSTD, compress, options, sandbox, type Sandbox } from './util.ts';

const isRoot = process.getuid?.() === 0;
let umociOk = false;
try {
  execFileSync('umoci', ['--version'], { stdio: 'ignore' });
  umociOk = true;
} catch { /* not installed */ }

let sb: Sandbox;
beforeAll(() => { sb = sandbox(); });
afterAll(() => {
  expect(sb.canaryIntact()).toBe(true);
  sb.cleanup();
});

describe.skipIf(!isRoot || !umociOk)('ground truth: umoci unpack', () => {
  it('gives the same tree for a 5-layer image with gzip, zstd and plain layers', async () => {
    const layers = fixtureLayers();
    // umoci 0.4.7 (Debian) predates zstd layers: it gets the same tars as gzip.
    const forUmoci = await buildOciLayout(join(sb.base, 'dest-layout-umoci'), {
      layers: layers.map((l) => ({ data: compress(l.tar, l.mediaType === ZSTD ? GZIP : l.mediaType), mediaType: l.mediaType === ZSTD ? GZIP : l.mediaType })),
      tag: 'fixture',
    });
    const ours = await buildOciLayout(join(sb.base, 'dest-layout'), {
      layers: layers.map((l) => ({ data: compress(l.tar, l.mediaType), mediaType: l.mediaType })),
      tag: 'fixture',
    });
    execFileSync('umoci', ['unpack', '--image', `${forUmoci.layoutDir}:fixture`, join(sb.base, 'dest-umoci')], { stdio: 'pipe' });
    const sources: LayerSource[] = ours.layers.map((l) => ({
      ...l,
      open: async () => createReadStream(join(ours.layoutDir, 'blobs', 'sha256', l.digest.slice(7)), { highWaterMark: 64 * 1024 }),
    }));
    mkdirSync(join(sb.base, 'dest-ours'));
    const s = await unpackLayers(join(sb.base, 'dest-ours'), sources, options({ allowDevices: true, keepSysroot: true }));
    expect(s.layers).toBe(5);
    expect(s.devicesSkipped).toBe(0);
    const diffs = compareTrees(join(sb.base, 'dest-umoci', 'rootfs'), join(sb.base, 'dest-ours'), { ignoreXattrs: ['security.selinux'] });
    expect(diffs).toEqual([]);
  });
});
