// A chunkah-style 400-layer bootable image through a real registry: the pull keeps to its
// connection budget (counted at a TCP relay in front of the registry) and its memory stays flat
// (peak RSS of the `pull` command, read by /usr/bin/time in a child process).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { pullToDest } from '../../src/pull.ts';
import { xattrs } from '../../src/xattr.ts';
import { buildChunkahImage } from '../helpers/ostree-image.ts';
import { pushLayout, type BuiltImage } from '../helpers/oci-image.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { insecureConf } from '../registry/util.ts';
import { defaultLimits, sandbox, type Sandbox } from './util.ts';

const ROOT = join(import.meta.dirname, '..', '..');
const LAYERS = 400;
const isRoot = process.getuid?.() === 0;

interface Relay { host: string; peak(): number; opened(): number; stop(): Promise<void> }

/** Forwards TCP to `upstream`, counting connections open at once and in total. */
async function startRelay(upstream: string): Promise<Relay> {
  const [uhost, uport] = upstream.split(':') as [string, string];
  let open = 0;
  let peak = 0;
  let total = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    open++;
    total++;
    peak = Math.max(peak, open);
    const up = createConnection({ host: uhost, port: Number(uport) });
    sockets.add(client).add(up);
    client.pipe(up).pipe(client);
    const close = (): void => { client.destroy(); up.destroy(); };
    client.on('error', close).on('close', close);
    up.on('error', close).on('close', close);
    client.once('close', () => { open--; sockets.delete(client); sockets.delete(up); });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    host: `127.0.0.1:${port}`,
    peak: () => peak,
    opened: () => total,
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe.skipIf(!isRoot)('a 400-layer chunkah-style image', () => {
  let sb: Sandbox;
  let reg: RunningRegistry;
  let img: BuiltImage;
  beforeAll(async () => {
    sb = sandbox();
    reg = await startRegistry();
    img = await buildChunkahImage(join(sb.base, 'dest-layout'), { layers: LAYERS });
    await pushLayout(img.layoutDir, 'latest', reg.host, 'fcos/next');
  }, 300_000);
  afterAll(async () => {
    await reg?.stop();
    expect(sb.canaryIntact()).toBe(true);
    sb.cleanup();
  });

  it('pulls with at most `concurrency` blob connections at once, and unpacks with bootc rules', async () => {
    const relay = await startRelay(reg.host);
    try {
      const conf = join(sb.base, 'dest-conf');
      mkdirSync(conf);
      const out = join(sb.base, 'dest-tree');
      const s = await pullToDest(`${relay.host}/fcos/next:latest`, out, { registriesConf: insecureConf(conf, [relay.host]), cacheDir: join(sb.base, 'dest-cache'), concurrency: 3 }, {
        limits: defaultLimits(), allowDevices: false, keepSysroot: false,
      });
      expect(s.layers).toBe(LAYERS);
      expect(s.bootc).toMatchObject({ firstDerivedLayer: 0, layerCount: LAYERS, version: '44.20260801.20.0' });
      // The 3 prefetching downloads plus the unpacker's own reads of finished cache files need
      // no more; the manifest and config requests come first, on the same pool.
      expect(relay.peak()).toBeLessThanOrEqual(4);
      // Kept-alive connections carry all 400 blobs: a handful opened, not one per layer.
      expect(relay.opened()).toBeLessThanOrEqual(10);
      expect(readFileSync(join(out, 'usr/etc/os-release'), 'utf8')).toContain('coreos');
      expect(existsSync(join(out, 'etc'))).toBe(false);
      expect(xattrs().getAttributeSync(join(out, 'usr/lib/pkg050/f1'), 'security.capability')?.toString('hex')).toBe('0100000200200000000000000000000000000000');
      expect(xattrs().getAttributeSync(join(out, 'usr/lib/pkg399/f0'), 'user.component')?.toString()).toBe('pkg399');
    } finally {
      await relay.stop();
    }
  }, 300_000);

  it('pulls with flat memory: peak RSS of `pull --dest` stays under 256 MiB', () => {
    const conf = join(sb.base, 'dest-conf2');
    mkdirSync(conf);
    const out = join(sb.base, 'dest-cli');
    const r = spawnSync('/usr/bin/time', ['-f', 'maxrss_kib=%M', process.execPath, join(ROOT, 'src', 'main.ts'), 'pull', `${reg.host}/fcos/next:latest`,
      '--dest', out, '--registries-conf', insecureConf(conf, [reg.host]), '--json'], {
      encoding: 'utf8', env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' }, timeout: 280_000,
    });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ layers: LAYERS });
    const kib = Number(/maxrss_kib=(\d+)/.exec(r.stderr)?.[1]);
    expect(kib).toBeGreaterThan(0);
    expect(kib).toBeLessThan(256 * 1024);
  }, 300_000);
});
