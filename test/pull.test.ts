// pull IMAGE --dest DIR against a real loopback registry, compared with umoci unpack of the same
// image; a failed pull leaves neither DIR nor DIR.partial behind.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildOciLayout, pushLayout, registryBlobPath, type BuiltImage } from './helpers/oci-image.ts';
import { startRegistry, type RunningRegistry } from './helpers/registry.ts';
import { compareTrees } from './helpers/tree-compare.ts';
import { insecureConf, runCli } from './registry/util.ts';
import { fixtureLayers } from './unpack/fixture-image.ts';
import { GZIP, ZSTD, compress, defaultLimits, sandbox, type Sandbox } from './unpack/util.ts';
import { pullToDest } from '../src/pull.ts';
import { ENV_VAR, resetFailpoints } from '../src/failpoints.ts';
import { PivotError } from '../src/errors.ts';

const isRoot = process.getuid?.() === 0;
let sb: Sandbox;
let reg: RunningRegistry;
let conf: string;
let img: BuiltImage;
let gzLayout: string;

describe.skipIf(!isRoot)('pull --dest', () => {
  beforeAll(async () => {
    sb = sandbox();
    reg = await startRegistry();
    mkdirSync(join(sb.base, 'dest-conf'));
    conf = insecureConf(join(sb.base, 'dest-conf'), [reg.host]);
    const layers = fixtureLayers();
    img = await buildOciLayout(join(sb.base, 'dest-src'), { tag: 'v1', layers: layers.map((l) => ({ data: compress(l.tar, l.mediaType), mediaType: l.mediaType })) });
    await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/node');
    const gz = await buildOciLayout(join(sb.base, 'dest-gz'), { tag: 'v1', layers: layers.map((l) => ({ data: compress(l.tar, l.mediaType === ZSTD ? GZIP : l.mediaType), mediaType: l.mediaType === ZSTD ? GZIP : l.mediaType })) });
    gzLayout = gz.layoutDir;
    execFileSync('umoci', ['unpack', '--image', `${gz.layoutDir}:v1`, join(sb.base, 'dest-umoci')], { stdio: 'pipe' });
  });
  afterAll(async () => {
    await reg?.stop();
    expect(sb.canaryIntact()).toBe(true);
    sb.cleanup();
  });

  it('unpacks the image like umoci, prints a JSON summary and renames DIR.partial to DIR', () => {
    const out = join(sb.base, 'dest-pulled');
    const r = runCli(['pull', `${reg.host}/ns/node:v1`, '--dest', out, '--registries-conf', conf, '--json']);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/skipped device nodes/);
    const s = JSON.parse(r.stdout);
    expect(s).toMatchObject({ manifestDigest: img.manifestDigest, layers: 5, dest: out, devicesSkipped: 1 });
    expect(s.compressedBytes).toBe(img.layers.reduce((n, l) => n + l.size, 0));
    expect(s.expandedBytes).toBeGreaterThan(0);
    expect(s.files).toBeGreaterThan(10);
    expect(existsSync(`${out}.partial`)).toBe(false);
    // keepSysroot defaults to false: the ostree repo is gone, its content stays under usr/.
    const umociRoot = join(sb.base, 'dest-umoci', 'rootfs');
    rmSync(join(umociRoot, 'sysroot', 'ostree'), { recursive: true });
    rmSync(join(umociRoot, 'dev-null')); // devices are skipped by default (allowDevices false)
    expect(compareTrees(umociRoot, out, { ignoreXattrs: ['security.selinux'] })).toEqual([]);
    expect(readFileSync(join(out, 'usr/bin/bash'), 'utf8')).toBe('bash binary');
  });

  it('--keep-sysroot keeps sysroot/ostree, exactly as umoci unpack does', () => {
    const out = join(sb.base, 'dest-keep');
    const r = runCli(['pull', `${reg.host}/ns/node:v1`, '--dest', out, '--keep-sysroot', '--registries-conf', conf, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const umoci = join(sb.base, 'dest-umoci-keep');
    execFileSync('umoci', ['unpack', '--image', `${gzLayout}:v1`, umoci], { stdio: 'pipe' });
    rmSync(join(umoci, 'rootfs', 'dev-null'));
    expect(existsSync(join(out, 'sysroot/ostree/repo/objects'))).toBe(true);
    expect(compareTrees(join(umoci, 'rootfs'), out, { ignoreXattrs: ['security.selinux'] })).toEqual([]);
    expect(runCli(['pull', `${reg.host}/ns/node:v1`, '--oci-layout', join(sb.base, 'x'), '--keep-sysroot']).code).toBe(2);
  });

  it('after dropping the ostree repo, sysroot/ keeps the image mtime (the same as umoci gives it)', () => {
    const out = join(sb.base, 'dest-mtime');
    expect(runCli(['pull', `${reg.host}/ns/node:v1`, '--dest', out, '--registries-conf', conf]).code).toBe(0);
    expect(existsSync(join(out, 'sysroot/ostree'))).toBe(false);
    const umoci = join(sb.base, 'dest-umoci-mtime');
    execFileSync('umoci', ['unpack', '--image', `${gzLayout}:v1`, umoci], { stdio: 'pipe' });
    const mtime = (p: string): number => statSync(p).mtimeMs;
    expect(mtime(join(out, 'sysroot'))).toBe(1_650_000_000_000);
    expect(mtime(join(out, 'sysroot'))).toBe(mtime(join(umoci, 'rootfs/sysroot')));
    // And every other directory the drop could touch keeps its mtime too: the root and usr/.
    for (const rel of ['', 'usr', 'usr/bin']) expect(mtime(join(out, rel)), rel || '/').toBe(mtime(join(umoci, 'rootfs', rel)));
  });

  it('prints a human summary line', () => {
    const out = join(sb.base, 'dest-human');
    const r = runCli(['pull', `${reg.host}/ns/node:v1`, '--dest', out, '--registries-conf', conf]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^pulled .*@${img.manifestDigest} into ${out}: 5 layers, \\d+ compressed bytes, \\d+ expanded bytes, \\d+ files`));
  });

  it('refuses an existing DIR and leaves it alone', () => {
    const out = join(sb.base, 'dest-exists');
    mkdirSync(out);
    writeFileSync(join(out, 'mine'), 'keep');
    const r = runCli(['pull', `${reg.host}/ns/node:v1`, '--dest', out, '--registries-conf', conf]);
    expect(r.code).toBe(2);
    expect(r.errorLine).toMatch(/already exists/);
    expect(readFileSync(join(out, 'mine'), 'utf8')).toBe('keep');
  });

  it('a damaged layer in the registry fails the pull and leaves neither DIR nor DIR.partial', () => {
    const layer = img.layers[3]!;
    const blob = registryBlobPath(reg.storageDir, layer.digest);
    const good = readFileSync(blob);
    const bad = Buffer.from(good);
    bad[Math.floor(bad.length / 2)]! ^= 0xff;
    writeFileSync(blob, bad);
    try {
      const out = join(sb.base, 'dest-damaged');
      const r = runCli(['pull', `${reg.host}/ns/node:v1`, '--dest', out, '--registries-conf', conf]);
      expect([4, 5]).toContain(r.code);
      expect(r.errorLine).toMatch(/layer|digest|blob/);
      expect(existsSync(out)).toBe(false);
      expect(existsSync(`${out}.partial`)).toBe(false);
    } finally {
      writeFileSync(blob, good);
    }
  });

  describe('with a blob cache (the pivot pulls this way)', () => {
    const unpackOpts = { limits: defaultLimits(), allowDevices: false, keepSysroot: false };
    const umociTree = (): string => {
      // The same normalisation as above: no ostree repo, no device nodes.
      const root = join(sb.base, 'dest-umoci', 'rootfs');
      rmSync(join(root, 'sysroot', 'ostree'), { recursive: true, force: true });
      rmSync(join(root, 'dev-null'), { force: true });
      return root;
    };

    it('downloads ahead into verified cache files and unpacks the same tree', async () => {
      const cacheDir = join(sb.base, 'dest-cache-a');
      const out = join(sb.base, 'dest-cached');
      const s = await pullToDest(`${reg.host}/ns/node:v1`, out, { registriesConf: conf, cacheDir }, unpackOpts);
      expect(s.transfer.bytesFetched).toBeGreaterThanOrEqual(s.compressedBytes);
      for (const l of img.layers) expect(readFileSync(join(cacheDir, l.digest.slice(7))).length).toBe(l.size);
      expect(compareTrees(umociTree(), out, { ignoreXattrs: ['security.selinux'] })).toEqual([]);
    });

    it('a rerun after a failure takes the verified blobs from the cache instead of the registry', async () => {
      const cacheDir = join(sb.base, 'dest-cache-b');
      const out = join(sb.base, 'dest-rerun');
      process.env[ENV_VAR] = 'unpack.layer:error=network@4';
      resetFailpoints();
      try {
        await expect(pullToDest(`${reg.host}/ns/node:v1`, out, { registriesConf: conf, cacheDir }, unpackOpts)).rejects.toBeInstanceOf(PivotError);
      } finally {
        delete process.env[ENV_VAR];
        resetFailpoints();
      }
      expect(existsSync(out) || existsSync(`${out}.partial`)).toBe(false);
      const s = await pullToDest(`${reg.host}/ns/node:v1`, out, { registriesConf: conf, cacheDir }, unpackOpts);
      const layerBytes = img.layers.reduce((n, l) => n + l.size, 0);
      expect(s.transfer.bytesFromCache).toBeGreaterThanOrEqual(layerBytes);
      expect(s.transfer.bytesFetched).toBeLessThan(layerBytes);
      expect(compareTrees(umociTree(), out, { ignoreXattrs: ['security.selinux'] })).toEqual([]);
    });
  });
});
