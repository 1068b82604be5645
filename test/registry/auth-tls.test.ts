// Auth, TLS, proxy and network failures against real servers on loopback: docker-registry with
// htpasswd Basic over TLS from a generated CA, docker-registry behind our token server, our
// CONNECT proxy, and unreachable hosts (DNS, connect, TLS) with one-line errors and exit 3.
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildOciLayout, gzip, OCI_LAYER_GZIP, pushLayout, simpleTar, type BuiltImage } from '../helpers/oci-image.ts';
import { freePort, issueClientCert, makeCa, startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { startTokenServer, type RunningTokenServer } from '../helpers/token-server.ts';
import { startConnectProxy, type RunningProxy } from '../helpers/connect-proxy.ts';
import { insecureConf, runCliAsync, writeAuthFile, writeRegistriesConf } from './util.ts';

let tmp: string;
let img: BuiltImage;
let emptyConf: string;
const noProxy = { HTTP_PROXY: '', HTTPS_PROXY: '', http_proxy: '', https_proxy: '', NO_PROXY: '', no_proxy: '', REGISTRY_AUTH_FILE: '/nonexistent/auth.json' };
let n = 0;
const out = (): string => join(tmp, `out-${++n}`);

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'nip-auth-'));
  emptyConf = writeRegistriesConf(tmp, '# nothing\n', 'empty.conf');
  img = await buildOciLayout(join(tmp, 'src'), { tag: 'v1', layers: [{ data: await gzip(await simpleTar({ 'hello': 'world' })), mediaType: OCI_LAYER_GZIP }] });
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

describe('Basic auth over TLS', () => {
  let reg: RunningRegistry;
  let certDir: string;
  beforeAll(async () => {
    reg = await startRegistry({ tls: true, htpasswd: { user: 'alice', password: 'correct-horse' } });
    await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/app', { user: 'alice', password: 'correct-horse', caFile: reg.caFile! });
    certDir = join(tmp, 'certs');
    mkdirSync(certDir);
    copyFileSync(reg.caFile!, join(certDir, 'ca.crt'));
  });
  afterAll(async () => { await reg.stop(); });

  it('pulls with the right password and the CA from --cert-dir', async () => {
    const authfile = writeAuthFile(tmp, { [reg.host]: { user: 'alice', password: 'correct-horse' } }, 'good.json');
    const r = await runCliAsync(['pull', `${reg.host}/ns/app:v1`, '--oci-layout', out(), '--registries-conf', emptyConf, '--cert-dir', certDir, '--authfile', authfile, '--json'], noProxy);
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).manifestDigest).toBe(img.manifestDigest);
  });

  it('uses the most specific auth key (host/ns/repo over host)', async () => {
    const authfile = join(tmp, 'specific.json');
    const b64 = (s: string) => Buffer.from(s).toString('base64');
    writeFileSync(authfile, JSON.stringify({ auths: { [reg.host]: { auth: b64('alice:wrong') }, [`${reg.host}/ns/app`]: { auth: b64('alice:correct-horse') } } }));
    const r = await runCliAsync(['pull', `${reg.host}/ns/app:v1`, '--oci-layout', out(), '--registries-conf', emptyConf, '--cert-dir', certDir, '--authfile', authfile], noProxy);
    expect(r.code, r.stderr).toBe(0);
  });

  it('a wrong password: exit 3, names the registry and the auth file, never the secret', async () => {
    const authfile = writeAuthFile(tmp, { [reg.host]: { user: 'alice', password: 'hunter2-wrong' } }, 'bad.json');
    const dir = out();
    const r = await runCliAsync(['pull', `${reg.host}/ns/app:v1`, '--oci-layout', dir, '--registries-conf', emptyConf, '--cert-dir', certDir, '--authfile', authfile], noProxy);
    expect(r.code).toBe(3);
    expect(r.errorLine).toContain(`registry ${reg.host} refused ns/app with HTTP 401`);
    expect(r.errorLine).toContain(authfile);
    expect(r.stderr).not.toContain('hunter2');
    expect(r.stderr).not.toContain(Buffer.from('alice:hunter2-wrong').toString('base64'));
    expect(existsSync(dir) || existsSync(`${dir}.partial`)).toBe(false);
  });

  it('without the CA: a TLS error (exit 3) that says TLS', async () => {
    const r = await runCliAsync(['pull', `${reg.host}/ns/app:v1`, '--oci-layout', out(), '--registries-conf', emptyConf], noProxy);
    expect(r.code).toBe(3);
    expect(r.errorLine).toMatch(/^network: TLS handshake with 127\.0\.0\.1:\d+ failed/);
  });

  it('goes through HTTPS_PROXY with CONNECT, and not when NO_PROXY covers the host', async () => {
    const proxy: RunningProxy = await startConnectProxy();
    try {
      const authfile = writeAuthFile(tmp, { [reg.host]: { user: 'alice', password: 'correct-horse' } }, 'proxy.json');
      const args = ['pull', `${reg.host}/ns/app:v1`, '--registries-conf', emptyConf, '--cert-dir', certDir, '--authfile', authfile];
      const r = await runCliAsync([...args, '--oci-layout', out()], { ...noProxy, HTTPS_PROXY: proxy.url });
      expect(r.code, r.stderr).toBe(0);
      expect(proxy.targets).toContain(reg.host);
      const before = proxy.targets.length;
      const r2 = await runCliAsync([...args, '--oci-layout', out()], { ...noProxy, HTTPS_PROXY: proxy.url, NO_PROXY: '127.0.0.1' });
      expect(r2.code, r2.stderr).toBe(0);
      expect(proxy.targets.length).toBe(before);
    } finally {
      await proxy.stop();
    }
  });
});

describe('mutual TLS', () => {
  it('presents the client certificate from the cert dir (NAME.cert + NAME.key), and fails TLS without it', async () => {
    const dir = mkdtempSync(join(tmp, 'mtls-'));
    const clientCa = makeCa(dir, 'client-ca');
    const reg = await startRegistry({ tls: true, clientCa: clientCa.caFile });
    try {
      const certDir = join(dir, 'certs');
      mkdirSync(certDir);
      copyFileSync(reg.caFile!, join(certDir, 'ca.crt'));
      const client = issueClientCert(clientCa, dir);
      await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/app', { caFile: reg.caFile!, clientCert: client });
      const bare = await runCliAsync(['pull', `${reg.host}/ns/app:v1`, '--oci-layout', out(), '--registries-conf', emptyConf, '--cert-dir', certDir], noProxy);
      expect(bare.code).toBe(3);
      // TLS 1.3 rejects the missing certificate after the client's side of the handshake.
      expect(bare.errorLine).toMatch(/^network: (TLS handshake with|transfer from) 127\.0\.0\.1:\d+ failed.*client certificate/);
      copyFileSync(client.cert, join(certDir, 'client.cert'));
      copyFileSync(client.key, join(certDir, 'client.key'));
      const r = await runCliAsync(['pull', `${reg.host}/ns/app:v1`, '--oci-layout', out(), '--registries-conf', emptyConf, '--cert-dir', certDir, '--json'], noProxy);
      expect(r.code, r.stderr).toBe(0);
      expect(JSON.parse(r.stdout).manifestDigest).toBe(img.manifestDigest);
    } finally {
      await reg.stop();
    }
  });
});

describe('Bearer token auth', () => {
  let ts: RunningTokenServer;
  let reg: RunningRegistry;
  beforeAll(async () => {
    ts = await startTokenServer({ dir: tmp, users: { bob: 'tok-pw' } });
    reg = await startRegistry({ tokenAuth: ts.registryConfig });
    await pushLayout(img.layoutDir, 'v1', reg.host, 'team/app', { user: 'bob', password: 'tok-pw' });
  });
  afterAll(async () => { await reg.stop(); await ts.stop(); });

  it('gets one pull-scoped token and reuses it for every request', async () => {
    const conf = insecureConf(mkdtempSync(join(tmp, 'c-')), [reg.host]);
    const authfile = writeAuthFile(tmp, { [reg.host]: { user: 'bob', password: 'tok-pw' } }, 'tok.json');
    const before = ts.requests.length;
    const r = await runCliAsync(['pull', `${reg.host}/team/app:v1`, '--oci-layout', out(), '--registries-conf', conf, '--authfile', authfile, '--json'], noProxy);
    expect(r.code, r.stderr).toBe(0);
    const mine = ts.requests.slice(before);
    expect(mine).toEqual([{ user: 'bob', scope: 'repository:team/app:pull', service: 'test-registry', status: 200 }]);
  });

  it('a token server that refuses the credentials: exit 3 naming the registry and auth file', async () => {
    const conf = insecureConf(mkdtempSync(join(tmp, 'c-')), [reg.host]);
    const authfile = writeAuthFile(tmp, { [reg.host]: { user: 'bob', password: 'nope-pw' } }, 'tokbad.json');
    const r = await runCliAsync(['pull', `${reg.host}/team/app:v1`, '--oci-layout', out(), '--registries-conf', conf, '--authfile', authfile], noProxy);
    expect(r.code).toBe(3);
    expect(r.errorLine).toMatch(new RegExp(`^auth: registry ${reg.host.replace(/\./g, '\\.')} refused team/app with HTTP 401 using credentials from ${authfile}`));
    expect(r.errorLine).toContain('token server');
    expect(r.stderr).not.toContain('nope-pw');
  });

  it('anonymous pull of a protected repo says no credentials were found and where it looked', async () => {
    const conf = insecureConf(mkdtempSync(join(tmp, 'c-')), [reg.host]);
    const r = await runCliAsync(['pull', `${reg.host}/team/app:v1`, '--oci-layout', out(), '--registries-conf', conf], noProxy);
    expect(r.code).toBe(3);
    expect(r.errorLine).toContain('no credentials (searched /nonexistent/auth.json');
  });
});

describe('unreachable hosts', () => {
  it('DNS failure says DNS', async () => {
    const r = await runCliAsync(['pull', 'registry.nonexistent.invalid/ns/app:v1', '--oci-layout', out(), '--registries-conf', emptyConf], noProxy);
    expect(r.code).toBe(3);
    expect(r.errorLine).toMatch(/^network: DNS lookup of registry\.nonexistent\.invalid failed \((ENOTFOUND|EAI_AGAIN)/);
  });

  it('connection refused says connect', async () => {
    const port = await freePort();
    const r = await runCliAsync(['pull', `127.0.0.1:${port}/ns/app:v1`, '--oci-layout', out(), '--registries-conf', emptyConf], noProxy);
    expect(r.code).toBe(3);
    expect(r.errorLine).toMatch(new RegExp(`^network: connect to 127\\.0\\.0\\.1:${port} failed \\(ECONNREFUSED`));
  });
});
