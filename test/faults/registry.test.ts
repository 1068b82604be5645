// Network faults between the agent and a real docker-registry, injected by our own proxy
// (test/helpers/fault-proxy.ts). Each case ends in either a complete, verified result (with the
// resumed bytes counted) or one clear line with the right exit code and no DIR or DIR.partial.
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect } from 'vitest';
import { PivotError } from '../../src/errors.ts';
import { openImage, writeOciLayout } from '../../src/registry/index.ts';
import { createLogger, setLogger } from '../../src/log.ts';
import { startFaultProxy, type FaultProxy } from '../helpers/fault-proxy.ts';
import { buildOciLayout, gzip, OCI_LAYER_GZIP, OCI_LAYER_TAR, pushLayout, simpleTar, type BuiltImage } from '../helpers/oci-image.ts';
import { freePort, startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { startTokenServer, type RunningTokenServer } from '../helpers/token-server.ts';
import { runCli, type CliRun } from './cli.ts';
import { faultCase } from './table.ts';

const CAT = 'registry';
const BIG = randomBytes(1_500_000);
let tmp: string;
let reg: RunningRegistry;
let proxy: FaultProxy;
let img: BuiltImage;
let n = 0;
const BLOB = /^GET \/v2\/ns\/app\/blobs\//;
/** Requests for the big layer only (the small one and the config finish before any cut). */
const BIG_BLOB = (): RegExp => new RegExp(`^GET /v2/ns/app/blobs/${bigLayer().digest}`);
const bigLayer = (): { digest: string; size: number } => img.layers[0]!;
const totalBlobBytes = (): number => img.layers.reduce((s, l) => s + l.size, 0) + (JSON.parse(img.manifest.toString()).config.size as number);

function conf(hosts: string[], extra = ''): string {
  const file = join(mkdtempSync(join(tmp, 'conf-')), 'registries.conf');
  writeFileSync(file, `${hosts.map((h) => `[[registry]]\nlocation = "${h}"\ninsecure = true\n`).join('\n')}\n${extra}`);
  return file;
}

interface Pulled { run: CliRun; out: string; summary?: { bytesFetched: number; bytesResumed: number; manifestDigest: string } }

async function pullLayout(host: string, registriesConf = conf([host]), env: Record<string, string> = {}): Promise<Pulled> {
  const out = join(tmp, `out-${++n}`);
  const run = await runCli(['pull', `${host}/ns/app:v1`, '--oci-layout', out, '--registries-conf', registriesConf, '--json'], { env });
  return { run, out, ...(run.code === 0 ? { summary: JSON.parse(run.stdout) } : {}) };
}

/** The layout holds every blob with its exact digest. */
function layoutComplete(out: string): void {
  const dir = join(out, 'blobs', 'sha256');
  for (const l of img.layers) {
    const bytes = readFileSync(join(dir, l.digest.slice(7)));
    expect(`sha256:${createHash('sha256').update(bytes).digest('hex')}`).toBe(l.digest);
  }
  expect(existsSync(`${out}.partial`)).toBe(false);
}

function nothingLeft(out: string): void {
  expect(existsSync(out), `${out} left behind`).toBe(false);
  expect(existsSync(`${out}.partial`), `${out}.partial left behind`).toBe(false);
}

function ok(p: Pulled): void {
  expect(p.run.code, p.run.stderr).toBe(0);
  layoutComplete(p.out);
}

const rangedBlobRequests = (): string[] => proxy.seen.filter((s) => s.path.includes('/blobs/') && s.range).map((s) => s.range!);

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'nip-faults-reg-'));
  // An uncompressed layer of random bytes (big enough to cut anywhere) and a small gzip one.
  img = await buildOciLayout(join(tmp, 'src'), {
    tag: 'v1',
    layers: [
      { data: await simpleTar({ 'usr/': '', 'usr/big': BIG }), mediaType: OCI_LAYER_TAR },
      { data: await gzip(await simpleTar({ 'etc/': '', 'etc/os-release': 'ID=faults\n' })), mediaType: OCI_LAYER_GZIP },
    ],
  });
  reg = await startRegistry();
  await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/app');
  proxy = await startFaultProxy(reg.url);
});
beforeEach(() => proxy.reset());
afterAll(async () => {
  await proxy?.stop();
  await reg?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe('transient faults are retried and resumed', () => {
  faultCase(CAT, 'connection reset mid-blob at byte 300000', 'complete; Range resume from >0; bytesResumed > 0', async () => {
    proxy.rules = [{ match: BIG_BLOB(), fault: { kind: 'reset', afterBytes: 300_000 }, times: 1 }];
    const p = await pullLayout(proxy.host);
    ok(p);
    const ranges = rangedBlobRequests();
    expect(ranges).toHaveLength(1);
    expect(Number(/\d+/.exec(ranges[0]!)![0])).toBeGreaterThan(0);
    expect(p.summary!.bytesResumed).toBeGreaterThan(0);
    expect(p.summary!.bytesFetched).toBe(totalBlobBytes());
    return `exit 0, ${ranges[0]}, resumed ${p.summary!.bytesResumed} B, fetched ${p.summary!.bytesFetched} B (= total)`;
  });

  faultCase(CAT, 'three resets, each 200000 bytes into the response', 'complete; 3 Range resumes; no byte fetched twice', async () => {
    proxy.rules = [{ match: BIG_BLOB(), fault: { kind: 'reset', afterBytes: 200_000 }, times: 3 }];
    const p = await pullLayout(proxy.host);
    ok(p);
    expect(rangedBlobRequests()).toHaveLength(3);
    expect(p.summary!.bytesFetched).toBe(totalBlobBytes());
    return `exit 0, ${rangedBlobRequests().length} resumes, resumed ${p.summary!.bytesResumed} B`;
  });

  faultCase(CAT, 'reset mid-blob with pull --dest', 'complete tree, file content exact', async () => {
    proxy.rules = [{ match: BIG_BLOB(), fault: { kind: 'reset', afterBytes: 400_000 }, times: 1 }];
    const out = join(tmp, `dest-${++n}`);
    const r = await runCli(['pull', `${proxy.host}/ns/app:v1`, '--dest', out, '--registries-conf', conf([proxy.host])]);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(join(out, 'usr', 'big')).equals(BIG)).toBe(true);
    expect(readFileSync(join(out, 'etc', 'os-release'), 'utf8')).toBe('ID=faults\n');
    expect(existsSync(`${out}.partial`)).toBe(false);
    expect(rangedBlobRequests()).toHaveLength(1);
    return `exit 0, usr/big byte-exact after ${rangedBlobRequests()[0]}`;
  });

  for (const status of [500, 503]) {
    faultCase(CAT, `${status} burst (3 in a row) on blobs`, 'complete after backoff', async () => {
      proxy.rules = [{ match: BLOB, fault: { kind: 'status', status }, times: 3 }];
      const p = await pullLayout(proxy.host);
      ok(p);
      const hits = proxy.seen.filter((s) => s.action === 'status').length;
      expect(hits).toBe(3);
      return `exit 0 after ${hits} x ${status}`;
    });
  }

  faultCase(CAT, '503 burst on the manifest', 'complete after backoff', async () => {
    proxy.rules = [{ match: /\/manifests\//, fault: { kind: 'status', status: 503 }, times: 2 }];
    const p = await pullLayout(proxy.host);
    ok(p);
    return `exit 0 after ${proxy.seen.filter((s) => s.action === 'status').length} x 503 on the manifest`;
  });

  faultCase(CAT, '429 with Retry-After: 2', 'complete, waiting >= 2 s as told', async () => {
    proxy.rules = [{ match: BLOB, fault: { kind: 'status', status: 429, retryAfter: '2' }, times: 1 }];
    const p = await pullLayout(proxy.host);
    ok(p);
    const blobReqs = proxy.seen.filter((s) => s.path.includes('/blobs/'));
    const i = blobReqs.findIndex((s) => s.action === 'status');
    expect(i).toBeGreaterThanOrEqual(0);
    expect(p.run.ms).toBeGreaterThanOrEqual(2000);
    return `exit 0 in ${(p.run.ms / 1000).toFixed(1)} s (>= 2 s)`;
  });

  faultCase(CAT, 'truncated body, correct Content-Length (FIN at byte 500000)', 'complete; Range resume', async () => {
    proxy.rules = [{ match: BIG_BLOB(), fault: { kind: 'truncate', afterBytes: 500_000, contentLength: 'correct' }, times: 1 }];
    const p = await pullLayout(proxy.host);
    ok(p);
    expect(rangedBlobRequests()).toHaveLength(1);
    expect(p.summary!.bytesResumed).toBeGreaterThan(0);
    return `exit 0, ${rangedBlobRequests()[0]}, resumed ${p.summary!.bytesResumed} B`;
  });

  faultCase(CAT, 'truncated body, wrong Content-Length (short body looks complete)', 'size check catches it; Range resume', async () => {
    proxy.rules = [{ match: BIG_BLOB(), fault: { kind: 'truncate', afterBytes: 500_000, contentLength: 'wrong' }, times: 1 }];
    const p = await pullLayout(proxy.host);
    ok(p);
    expect(rangedBlobRequests()).toEqual(['bytes=500000-']);
    expect(p.summary!.bytesResumed).toBe(500_000);
    return `exit 0, ${rangedBlobRequests()[0]}, resumed ${p.summary!.bytesResumed} B`;
  });

  faultCase(CAT, 'slow link (1 MB/s cap)', 'complete, no retries, time >= size / rate', async () => {
    proxy.rules = [{ match: BLOB, fault: { kind: 'throttle', bytesPerSecond: 1_000_000 } }];
    const p = await pullLayout(proxy.host);
    ok(p);
    expect(rangedBlobRequests()).toHaveLength(0);
    expect(p.summary!.bytesFetched).toBe(totalBlobBytes());
    expect(p.run.ms).toBeGreaterThanOrEqual(1400);
    return `exit 0 in ${(p.run.ms / 1000).toFixed(1)} s for ${totalBlobBytes()} B, no retries`;
  });

  faultCase(CAT, 'first mirror refuses connections', 'falls back to the next source; complete', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    const file = conf([], `[[registry]]\nlocation = "${proxy.host}"\ninsecure = true\n[[registry.mirror]]\nlocation = "${dead}"\ninsecure = true\n`);
    const p = await pullLayout(proxy.host, file, { NODE_IMAGE_PIVOT_LOG_LEVEL: 'info' });
    ok(p);
    expect(p.run.stderr).toMatch(/source failed, trying the next one/);
    expect(p.run.stderr).toMatch(/ECONNREFUSED/);
    expect(p.summary!.manifestDigest).toBe(img.manifestDigest);
    return `exit 0 from ${proxy.host} after ${dead} refused`;
  });
});

describe('token expiry mid-pull', () => {
  let ts: RunningTokenServer;
  let treg: RunningRegistry;
  let tproxy: FaultProxy;
  beforeAll(async () => {
    ts = await startTokenServer({ dir: mkdtempSync(join(tmp, 'ts-')) });
    treg = await startRegistry({ tokenAuth: ts.registryConfig });
    await pushLayout(img.layoutDir, 'v1', treg.host, 'ns/app');
    tproxy = await startFaultProxy(treg.url);
  });
  afterAll(async () => {
    await tproxy?.stop();
    await treg?.stop();
    await ts?.stop();
  });

  faultCase(CAT, 'token expiry mid-pull (401 after the first blob)', 'a fresh token is fetched once; complete', async () => {
    const before = ts.requests.length;
    // The config blob is the first blob; the expiry hits the next blob request.
    tproxy.rules = [{ match: BLOB, fault: { kind: 'expire' }, times: 1, skip: 1 }];
    const p = await pullLayout(tproxy.host);
    ok(p);
    const unauthorized = tproxy.seen.filter((s) => s.status === 401 && s.authorization !== undefined);
    expect(unauthorized.length).toBeGreaterThanOrEqual(1);
    const tokens = ts.requests.length - before;
    // Blobs are fetched concurrently: each request that met the stale token refreshes once.
    expect(tokens).toBeGreaterThanOrEqual(2);
    expect(tokens).toBeLessThanOrEqual(1 + unauthorized.length);
    return `exit 0; ${unauthorized.length} x 401 with a stale token, ${tokens} token requests`;
  });
});

describe('permanent faults fail cleanly', () => {
  faultCase(CAT, 'flipped byte in a layer (pull --oci-layout)', 'exit 4 naming the blob; no DIR, no DIR.partial', async () => {
    proxy.rules = [{ match: new RegExp(`blobs/${bigLayer().digest}`), fault: { kind: 'flip', atByte: 123_456 } }];
    const p = await pullLayout(proxy.host);
    expect(p.run.code).toBe(4);
    expect(p.run.errorLine).toContain(bigLayer().digest);
    expect(p.run.errorLine).toMatch(/^verification: /);
    nothingLeft(p.out);
    return `exit ${p.run.code}: ${p.run.errorLine.slice(0, 110)}`;
  });

  faultCase(CAT, 'flipped byte in a layer (pull --dest)', 'exit 4 naming the blob; no DIR, no DIR.partial', async () => {
    proxy.rules = [{ match: new RegExp(`blobs/${bigLayer().digest}`), fault: { kind: 'flip', atByte: 1000 } }];
    const out = join(tmp, `dest-${++n}`);
    const r = await runCli(['pull', `${proxy.host}/ns/app:v1`, '--dest', out, '--registries-conf', conf([proxy.host])]);
    expect(r.code).toBe(4);
    expect(r.errorLine).toContain(bigLayer().digest);
    nothingLeft(out);
    return `exit ${r.code}: ${r.errorLine.slice(0, 110)}`;
  });

  faultCase(CAT, 'flipped byte in the image config', 'exit 4 naming the config blob', async () => {
    const cfg = JSON.parse(img.manifest.toString()).config.digest as string;
    proxy.rules = [{ match: new RegExp(`blobs/${cfg}`), fault: { kind: 'flip', atByte: 5 } }];
    const p = await pullLayout(proxy.host);
    expect(p.run.code).toBe(4);
    expect(p.run.errorLine).toContain(cfg);
    nothingLeft(p.out);
    return `exit ${p.run.code}, names ${cfg.slice(0, 19)}...`;
  });

  faultCase(CAT, 'endless 503 on blobs', 'exit 3 after the retry budget; no DIR, no DIR.partial', async () => {
    proxy.rules = [{ match: BLOB, fault: { kind: 'status', status: 503 } }];
    const p = await pullLayout(proxy.host);
    expect(p.run.code).toBe(3);
    expect(p.run.errorLine).toMatch(/503/);
    nothingLeft(p.out);
    return `exit ${p.run.code} after ${proxy.seen.filter((s) => s.action === 'status').length} tries: ${p.run.errorLine.slice(0, 90)}`;
  }, 90_000);

  faultCase(CAT, 'reset at byte 700000, then the link stays down (503)', 'exit 3, DIR.partial kept; rerun resumes from exactly the kept bytes (at most 700000)', async () => {
    proxy.rules = [
      { match: BIG_BLOB(), fault: { kind: 'reset', afterBytes: 700_000 }, times: 1 },
      { match: BIG_BLOB(), fault: { kind: 'status', status: 503 } },
    ];
    const first = await pullLayout(proxy.host);
    expect(first.run.code).toBe(3);
    expect(existsSync(first.out)).toBe(false);
    const kept = join(`${first.out}.partial`, 'blobs', 'sha256', `${bigLayer().digest.slice(7)}.partial`);
    // The proxy resets after 700000 bytes, but a reset discards what the kernel had not sent
    // yet, and how much that is depends on the machine's load: the rerun must resume from
    // exactly what was kept, whatever it is.
    const keptBytes = readFileSync(kept).length;
    expect(keptBytes).toBeGreaterThan(0);
    expect(keptBytes).toBeLessThanOrEqual(700_000);
    proxy.reset();
    const out = first.out;
    const run = await runCli(['pull', `${proxy.host}/ns/app:v1`, '--oci-layout', out, '--registries-conf', conf([proxy.host]), '--json']);
    expect(run.code, run.stderr).toBe(0);
    layoutComplete(out);
    const summary = JSON.parse(run.stdout) as { bytesResumed: number; bytesFetched: number };
    expect(summary.bytesResumed).toBe(keptBytes);
    expect(rangedBlobRequests()).toEqual([`bytes=${keptBytes}-`]);
    return `first exit 3 (${first.run.errorLine.slice(0, 50)}...); rerun exit 0, resumed ${summary.bytesResumed} B from DIR.partial`;
  }, 90_000);

  faultCase(CAT, 'every source refuses connections', 'exit 3 saying connect failed; nothing left', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    const p = await pullLayout(dead);
    expect(p.run.code).toBe(3);
    expect(p.run.errorLine).toMatch(/connect to 127\.0\.0\.1:\d+ failed \(ECONNREFUSED/);
    nothingLeft(p.out);
    return `exit ${p.run.code}: ${p.run.errorLine.slice(0, 100)}`;
  });
});

describe('stalls (read timeout from the config, 1 s)', () => {
  const logs: string[] = [];
  beforeAll(() => { setLogger(createLogger({ level: 'info', sink: (l) => logs.push(l) })); });

  async function pullInProcess(timeouts: { readSeconds: number; pullSeconds: number }): Promise<{ dir: string; ms: number; resumed: number }> {
    const t0 = Date.now();
    const image = await openImage(`${proxy.host}/ns/app:v1`, { registriesConf: conf([proxy.host]), timeouts });
    const dir = join(tmp, `stall-${++n}`);
    try {
      await writeOciLayout(image, dir);
      return { dir, ms: Date.now() - t0, resumed: image.stats().bytesResumed };
    } finally {
      await image.close();
    }
  }

  faultCase(CAT, 'stall: headers then no bytes, once', 'read timeout fires after ~1 s; retried; complete', async () => {
    proxy.rules = [{ match: BLOB, fault: { kind: 'stall' }, times: 1, skip: 1 }];
    const r = await pullInProcess({ readSeconds: 1, pullSeconds: 30 });
    layoutComplete(r.dir);
    expect(r.ms).toBeGreaterThanOrEqual(900);
    expect(logs.some((l) => l.includes('retrying blob') && l.includes('UND_ERR_BODY_TIMEOUT'))).toBe(true);
    return `complete in ${(r.ms / 1000).toFixed(1)} s after a body timeout`;
  });

  faultCase(CAT, 'stall on every blob request', 'exit 3 within the pull budget; no DIR; a rerun converges', async () => {
    proxy.rules = [{ match: BIG_BLOB(), fault: { kind: 'stall' } }];
    const t0 = Date.now();
    const err = await pullInProcess({ readSeconds: 1, pullSeconds: 5 }).then(() => undefined, (e: unknown) => e);
    const ms = Date.now() - t0;
    expect(err).toBeInstanceOf(PivotError);
    const pe = err as PivotError;
    expect(pe.exitCode).toBe(3);
    expect(pe.message).toContain(bigLayer().digest);
    expect(ms).toBeLessThan(15_000);
    const dir = join(tmp, `stall-${n}`);
    expect(existsSync(dir)).toBe(false);
    // Transient: DIR.partial is kept for a resume; the stalled blob has no bytes in it.
    const stalled = readdirSync(join(`${dir}.partial`, 'blobs', 'sha256')).filter((f) => f.startsWith(bigLayer().digest.slice(7)));
    expect(stalled.map((f) => statSync(join(`${dir}.partial`, 'blobs', 'sha256', f)).size)).toEqual(stalled.length ? [0] : []);
    proxy.reset();
    const image = await openImage(`${proxy.host}/ns/app:v1`, { registriesConf: conf([proxy.host]) });
    try {
      await writeOciLayout(image, dir);
    } finally {
      await image.close();
    }
    layoutComplete(dir);
    return `exit ${pe.exitCode} after ${(ms / 1000).toFixed(1)} s (budget 5 s); rerun complete`;
  }, 60_000);
});
