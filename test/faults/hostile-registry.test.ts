// Issue 17: hostile registries, CDNs and token realms on 127.0.0.1 (test/helpers/hostile-cases.ts,
// the same cases scripts/bench/hostile.ts measures). Each case ends in the right exit code with
// one line naming the host and the bound, nothing sent where it must not go, and nothing retried
// that would only fail again.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { configSchema } from '../../src/config.ts';
import { PivotError } from '../../src/errors.ts';
import { openImage, writeOciLayout } from '../../src/registry/index.ts';
import { pullToDest } from '../../src/pull.ts';
import { FORGED_PULLSPEC, HOSTILE_CASES, USER, type HostileCase } from '../helpers/hostile-cases.ts';
import { imageOf, startHostile, trickle } from '../helpers/hostile-registry.ts';
import { OCI_LAYER_GZIP } from '../helpers/oci-image.ts';
import { issueServerCert, makeCa } from '../helpers/registry.ts';
import { TarBuilder } from '../helpers/tar-builder.ts';
import { MAIN, runCli, type CliRun } from './cli.ts';
import { faultCase } from './table.ts';

const CAT = 'hostile-registry';
let tmp: string;
beforeAll(() => { tmp = mkdtempSync(join(tmpdir(), 'nip-hostile-')); });
afterAll(() => { rmSync(tmp, { recursive: true, force: true }); });

/** Runs a case's CLI command against its servers; stops them whatever happens. */
async function cliCase(name: string, check: (r: CliRun, c: HostileCase) => string): Promise<string> {
  const c = await HOSTILE_CASES[name]!(tmp);
  try {
    expect(c.runner).toBe('cli');
    return check(await runCli(c.args), c);
  } finally {
    await c.stop();
  }
}

const retries = (r: CliRun): number => (r.stderr.match(/"msg":"retrying /g) ?? []).length;

describe('item 1: resolve acts only on verified bytes', () => {
  faultCase(CAT, 'forged release layer (resolve by digest)', 'exit 4 naming the layer; the forged pullspec is never printed', () =>
    cliCase('forged release layer (resolve by digest)', (r, c) => {
      expect(r.code, r.stderr).toBe(4);
      expect(r.errorLine).toMatch(/^verification: /);
      expect(r.errorLine).toContain(String(c.observe().layer));
      expect(r.stdout).not.toContain(FORGED_PULLSPEC);
      return `exit 4: ${r.errorLine.slice(0, 100)}`;
    }));
});

describe('item 2: credentials stay on their origin', () => {
  faultCase(CAT, 'CDN 401 with its own realm after a redirect', 'exit 3 naming the CDN host; no credentials and no token request there', () =>
    cliCase('CDN 401 with its own realm after a redirect', (r, c) => {
      const o = c.observe();
      expect(r.code, r.stderr).toBe(3);
      expect(r.errorLine).toContain(String(o.cdnHost));
      expect(r.errorLine).not.toMatch(/refused .* using credentials/);
      expect(o.credentialsAtCdn).toBe(0);
      expect(o.realmRequests).toBe(0);
      return `exit 3, CDN realm asked ${String(o.realmRequests)} times: ${r.errorLine.slice(0, 90)}`;
    }));

  faultCase(CAT, 'HTTPS registry naming a plain-HTTP token realm', 'exit 3 naming the realm; the realm gets no request with Basic credentials', async () => {
    const dir = mkdtempSync(join(tmp, 'tls-'));
    const ca = makeCa(dir);
    const cert = issueServerCert(ca, dir);
    const realm = await startHostile({ handler: (_req, res) => { res.writeHead(200).end('{"token":"t"}'); return true; } });
    const img = imageOf([{ data: gzipSync(new TarBuilder().file('a', 'b').end()), mediaType: OCI_LAYER_GZIP }]);
    const reg = await startHostile({
      images: { 'ns/app': img },
      tls: { cert: readFileSync(cert.cert, 'utf8'), key: readFileSync(cert.key, 'utf8') },
      handler: (req, res) => {
        if (req.headers.authorization?.startsWith('Bearer ')) return false;
        res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${realm.host}/token",service="x"` }).end();
        return true;
      },
    });
    try {
      writeFileSync(join(dir, 'auth.json'), JSON.stringify({ auths: { [reg.host]: { auth: Buffer.from(`${USER.user}:${USER.password}`).toString('base64') } } }));
      const certs = mkdtempSync(join(dir, 'certs-'));
      writeFileSync(join(certs, 'ca.crt'), readFileSync(ca.caFile));
      const r = await runCli(['pull', `${reg.host}/ns/app:v1`, '--oci-layout', join(dir, 'out'), '--authfile', join(dir, 'auth.json'), '--cert-dir', certs]);
      expect(r.code, r.stderr).toBe(3);
      expect(r.errorLine).toMatch(/^auth: /);
      expect(r.errorLine).toContain(realm.host);
      expect(realm.seen.filter((s) => s.authorization !== undefined)).toHaveLength(0);
      return `exit 3, realm saw ${realm.seen.length} requests: ${r.errorLine.slice(0, 90)}`;
    } finally {
      await reg.stop();
      await realm.stop();
    }
  });
});

describe('item 3: every parsed body is capped', () => {
  for (const name of ['token response of 100 MB', 'endless token response']) {
    faultCase(CAT, name, 'exit 3 naming the host and the 1 MiB token cap', () =>
      cliCase(name, (r) => {
        expect(r.code, r.stderr).toBe(3);
        expect(r.errorLine).toMatch(/a token for ns\/app from 127\.0\.0\.1:\d+ is larger than the 1048576-byte limit/);
        return `exit 3: ${r.errorLine.slice(0, 100)}`;
      }));
  }
});

describe('item 4: the pull budget is a deadline; stalls and timeouts are exit 3', () => {
  async function openWith(c: HostileCase, timeouts: Record<string, number>): Promise<{ err: unknown; ms: number }> {
    const t0 = Date.now();
    const err = await (async () => {
      const image = await openImage(c.args[0]!, { registriesConf: c.args[1]!, timeouts });
      try {
        await writeOciLayout(image, c.args[2]!);
      } finally {
        await image.close();
      }
    })().then(() => undefined, (e: unknown) => e);
    return { err, ms: Date.now() - t0 };
  }

  faultCase(CAT, 'manifest at 1 byte/s, pullSeconds 5', 'exit 3 at the deadline, naming the host and timeouts.pullSeconds', async () => {
    const c = await HOSTILE_CASES['manifest at 1 byte/s, pullSeconds 5']!(tmp);
    try {
      const { err, ms } = await openWith(c, c.timeouts!);
      expect(err).toBeInstanceOf(PivotError);
      const e = err as PivotError;
      expect(e.exitCode).toBe(3);
      expect(e.facts.limit).toBe('timeouts.pullSeconds');
      expect(e.message).toContain(c.servers[0]!.host);
      // The manifest alone would take minutes at this pace.
      expect(ms).toBeLessThan(30_000);
      return `exit 3 after ${(ms / 1000).toFixed(1)} s: ${e.message.slice(0, 90)}`;
    } finally {
      await c.stop();
    }
  });

  faultCase(CAT, 'manifest headers, then silence (readSeconds 1)', 'exit 3 naming timeouts.readSeconds (was exit 1)', async () => {
    const img = imageOf([{ data: gzipSync(new TarBuilder().file('a', 'b').end()), mediaType: OCI_LAYER_GZIP }]);
    const server = await startHostile({ images: { 'ns/app': img }, handler: (req, res) => {
      if (!req.url?.includes('/manifests/')) return false;
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'content-length': 100 });
      res.flushHeaders();
      return true;
    } });
    try {
      const dir = mkdtempSync(join(tmp, 'silent-'));
      writeFileSync(join(dir, 'registries.conf'), `[[registry]]\nlocation = "${server.host}"\ninsecure = true\n`);
      const { err } = await openWith({ args: [`${server.host}/ns/app:v1`, join(dir, 'registries.conf'), join(dir, 'out')] } as HostileCase, { readSeconds: 1, pullSeconds: 60 });
      expect(err).toBeInstanceOf(PivotError);
      const e = err as PivotError;
      expect(e.exitCode).toBe(3);
      expect(e.facts.limit).toBe('timeouts.readSeconds');
      expect(e.message).toContain(server.host);
      const tries = server.seen.filter((s) => s.path.includes('/manifests/')).length;
      expect(tries).toBeGreaterThan(1);
      return `exit 3 after ${tries} tries: ${e.message.slice(0, 90)}`;
    } finally {
      await server.stop();
    }
  }, 60_000);

  faultCase(CAT, 'blob at 2 bytes/s (under the throughput floor, never idle for readSeconds)', 'the stall is detected and retried; exit 3 by the deadline', async () => {
    const layer = gzipSync(new TarBuilder().file('a', 'b').end());
    const img = imageOf([{ data: layer, mediaType: OCI_LAYER_GZIP }]);
    const server = await startHostile({ images: { 'ns/app': img }, handler: (req, res) => {
      if (!req.url?.endsWith(img.layers[0]!.digest)) return false;
      res.writeHead(200, { 'content-length': layer.length });
      void trickle(res, layer, 500);
      return true;
    } });
    try {
      const dir = mkdtempSync(join(tmp, 'slow-'));
      writeFileSync(join(dir, 'registries.conf'), `[[registry]]\nlocation = "${server.host}"\ninsecure = true\n`);
      const { err } = await openWith({ args: [`${server.host}/ns/app:v1`, join(dir, 'registries.conf'), join(dir, 'out')] } as HostileCase, { readSeconds: 1, pullSeconds: 10 });
      expect(err).toBeInstanceOf(PivotError);
      expect((err as PivotError).exitCode).toBe(3);
      // Without the throughput rule the one slow request would simply run into the deadline.
      const tries = server.seen.filter((s) => s.path.endsWith(img.layers[0]!.digest)).length;
      expect(tries).toBeGreaterThan(1);
      return `exit 3 after ${tries} blob requests: ${(err as Error).message.slice(0, 80)}`;
    } finally {
      await server.stop();
    }
  }, 60_000);
});

describe('item 5: global PAX headers are bounded', () => {
  faultCase(CAT, 'global PAX headers, 86 MB layer', 'exit 5 naming the limit; no DIR, no DIR.partial', () =>
    cliCase('global PAX headers, 86 MB layer', (r, c) => {
      expect(r.code, r.stderr).toBe(5);
      expect(r.errorLine).toMatch(/^limit: .*global PAX headers add up to/);
      const out = c.args[c.args.indexOf('--dest') + 1]!;
      expect(existsSync(out)).toBe(false);
      expect(existsSync(`${out}.partial`)).toBe(false);
      return `exit 5: ${r.errorLine.slice(0, 100)}`;
    }));
});

describe('item 6: errors list a few, and the exit code does not depend on stderr', () => {
  faultCase(CAT, 'index of 10,000 platforms', 'exit 3; the line names 10 platforms "and 9,990 more"', () =>
    cliCase('index of 10,000 platforms', (r) => {
      expect(r.code, r.stderr).toBe(3);
      expect(r.errorLine).toContain('and 9,990 more');
      expect(r.stderr.length).toBeLessThan(8192);
      return `exit 3, ${r.stderr.length} bytes of stderr: ${r.errorLine.slice(0, 80)}`;
    }));

  faultCase(CAT, 'slow stderr reader, 2 MB of log lines', 'every line arrives whole and the exit code is the one set', async () => {
    const script = `import { createLogger } from ${JSON.stringify(join(MAIN, '..', 'log.ts'))};
void process.stderr.isTTY;
const log = createLogger({ level: 'info' });
for (let i = 0; i < 20; i++) log.error({ i }, 'x'.repeat(100000));
process.exitCode = 3;`;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    // A reader slower than the writer: the pipe fills and the writer meets EAGAIN.
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      child.stderr.pause();
      setTimeout(() => child.stderr.resume(), 5);
    });
    const code = await new Promise<number | null>((r) => child.on('close', r));
    const lines = stderr.split('\n').filter((l) => l.includes('"level":50'));
    expect(code).toBe(3);
    expect(lines).toHaveLength(20);
    for (const l of lines) expect(l).toContain('x'.repeat(100000));
    return `exit ${code}, ${lines.length} whole lines, ${stderr.length} bytes`;
  });
});

describe('item 7: a layer listed several times is fetched once', () => {
  faultCase(CAT, 'one layer listed 3 times (pull --oci-layout)', 'exit 0; one GET of the layer; the blob verifies', () =>
    cliCase('one layer listed 3 times (pull --oci-layout)', (r, c) => {
      expect(r.code, r.stderr).toBe(0);
      expect(c.observe().layerGets).toBe(1);
      const out = c.args[c.args.indexOf('--oci-layout') + 1]!;
      const index = JSON.parse(readFileSync(join(out, 'index.json'), 'utf8')) as { manifests: Array<{ digest: string }> };
      const manifest = JSON.parse(readFileSync(join(out, 'blobs', 'sha256', index.manifests[0]!.digest.slice(7)), 'utf8')) as { layers: Array<{ digest: string }> };
      expect(manifest.layers).toHaveLength(3);
      const blob = readFileSync(join(out, 'blobs', 'sha256', manifest.layers[0]!.digest.slice(7)));
      expect(`sha256:${createHash('sha256').update(blob).digest('hex')}`).toBe(manifest.layers[0]!.digest);
      return `exit 0, ${String(c.observe().layerGets)} GET for 3 uses`;
    }));

  faultCase(CAT, 'one layer listed 3 times (blob cache prefetch, as the pivot pulls)', 'complete tree; one GET of the layer', async () => {
    const c = await HOSTILE_CASES['one layer listed 3 times (pull --oci-layout)']!(tmp);
    try {
      const conf = c.args[c.args.indexOf('--registries-conf') + 1]!;
      const dir = mkdtempSync(join(tmp, 'prefetch-'));
      const defaults = configSchema.parse({ image: 'x' });
      const summary = await pullToDest(c.args[1]!, join(dir, 'tree'), { registriesConf: conf, cacheDir: join(dir, 'cache') }, {
        limits: defaults.limits, allowDevices: false, keepSysroot: false,
      });
      expect(summary.layers).toBe(3);
      expect(readFileSync(join(dir, 'tree', 'usr', 'big')).length).toBe(2_000_000);
      expect(c.observe().layerGets).toBe(1);
      return `complete, ${String(c.observe().layerGets)} GET for 3 layers`;
    } finally {
      await c.stop();
    }
  });
});

describe('also: layer count, resolve decompression, permanent answers', () => {
  faultCase(CAT, 'manifest with 25,000 layers', 'exit 3 naming the 500-layer cap; no blob requested', () =>
    cliCase('manifest with 25,000 layers', (r, c) => {
      expect(r.code, r.stderr).toBe(3);
      expect(r.errorLine).toContain('lists 25000 layers, over the limit of 500');
      expect(c.observe().blobRequests).toBe(0);
      return `exit 3: ${r.errorLine.slice(0, 100)}`;
    }));

  faultCase(CAT, 'decompression bomb in resolve (1000x, 2 GiB)', 'exit 5 at the 100x ratio, long before 2 GiB', () =>
    cliCase('decompression bomb in resolve (1000x, 2 GiB)', (r) => {
      expect(r.code, r.stderr).toBe(5);
      expect(r.errorLine).toMatch(/^limit: .*expands more than 100x/);
      return `exit 5: ${r.errorLine.slice(0, 100)}`;
    }));

  faultCase(CAT, 'token with a CRLF', 'exit 3 at once: one token request, no retry', () =>
    cliCase('token with a CRLF', (r, c) => {
      expect(r.code, r.stderr).toBe(3);
      expect(r.errorLine).toMatch(/characters an HTTP header cannot carry/);
      expect(c.observe().tokenRequests).toBe(1);
      expect(retries(r)).toBe(0);
      return `exit 3, ${String(c.observe().tokenRequests)} token request, ${retries(r)} retries`;
    }));

  for (const [name, counter] of [['redirect to file:///etc/passwd', 'blobRequests'], ['response header overflow (64 KiB header)', 'manifestRequests'], ['malformed HTTP response', 'manifestRequests']] as const) {
    faultCase(CAT, name, 'exit 3 naming the host; asked once, not retried', () =>
      cliCase(name, (r, c) => {
        expect(r.code, r.stderr).toBe(3);
        expect(r.errorLine).toMatch(/127\.0\.0\.1:\d+/);
        expect(c.observe()[counter]).toBe(1);
        expect(retries(r)).toBe(0);
        return `exit 3, ${String(c.observe()[counter])} request: ${r.errorLine.slice(0, 80)}`;
      }));
  }
});
