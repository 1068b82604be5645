// Real registries on loopback for tests: Debian's docker-registry (distribution 2.8), optionally
// with htpasswd Basic auth, TLS from a CA generated here, or token auth against a token server
// (test/helpers/token-server.ts). Also the openssl recipes those need.
//
//   const reg = await startRegistry({ tls: true, htpasswd: { user: 'u', password: 'p' } });
//   reg.host      127.0.0.1:PORT
//   reg.url       https://127.0.0.1:PORT
//   reg.caFile    the CA that signed the server certificate (tls only)
//   await reg.stop()
import { spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'undici';

export interface TokenAuthConfig {
  realm: string;
  service: string;
  issuer: string;
  /** PEM file with the certificate(s) whose keys sign the tokens. */
  rootcertbundle: string;
}

export interface StartRegistryOptions {
  htpasswd?: { user: string; password: string };
  tls?: boolean;
  tokenAuth?: TokenAuthConfig;
  /** Share a storage directory with another instance (e.g. push to an open one, serve with auth). */
  storageDir?: string;
  /** Require client certificates signed by this CA file (mutual TLS; needs tls). */
  clientCa?: string;
  /** A fixed port, e.g. to bring a registry back where a machine expects it. */
  port?: number;
}

export interface RunningRegistry {
  host: string;
  url: string;
  dir: string;
  /** The registry's storage root (see registryBlobPath in oci-image.ts). */
  storageDir: string;
  caFile?: string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function openssl(args: string[], cwd: string): void {
  execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
}

export interface TestCa {
  caFile: string;
  caKey: string;
}

/** A throwaway CA. */
export function makeCa(dir: string, name = 'test-ca'): TestCa {
  const caKey = join(dir, `${name}.key`);
  const caFile = join(dir, `${name}.crt`);
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', caKey, '-out', caFile, '-days', '2',
    '-subj', `/CN=${name}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  return { caFile, caKey };
}

/** A certificate signed by `ca`: a key, a CSR and the extension file, all under `dir`. */
function issueCert(ca: TestCa, dir: string, name: string, subject: string, extensions: string, certFile: string): { cert: string; key: string } {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const ext = join(dir, `${name}.ext`);
  writeFileSync(ext, extensions);
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', subject], dir);
  openssl(['x509', '-req', '-in', csr, '-CA', ca.caFile, '-CAkey', ca.caKey, '-CAcreateserial', '-out', certFile, '-days', '2', '-extfile', ext], dir);
  return { cert: certFile, key };
}

/** A server certificate for 127.0.0.1 and localhost signed by `ca`. */
export function issueServerCert(ca: TestCa, dir: string, name = 'server'): { cert: string; key: string } {
  return issueCert(ca, dir, name, '/CN=127.0.0.1',
    'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n', join(dir, `${name}.crt`));
}

/** A client certificate (clientAuth) signed by `ca`, for mutual TLS; `.cert` as certs.d names it. */
export function issueClientCert(ca: TestCa, dir: string, name = 'client'): { cert: string; key: string } {
  return issueCert(ca, dir, name, `/CN=${name}`, 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n', join(dir, `${name}.cert`));
}

/** A self-signed certificate + key for signing registry tokens (the registry's rootcertbundle). */
export function makeTokenSigner(dir: string): { certFile: string; keyFile: string } {
  const keyFile = join(dir, 'token-signer.key');
  const certFile = join(dir, 'token-signer.crt');
  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=token-signer'], dir);
  return { certFile, keyFile };
}

function configYaml(port: number, storage: string, opts: StartRegistryOptions, files: { htpasswd?: string; cert?: string; key?: string }): string {
  const lines = [
    'version: 0.1',
    'log: {level: warn, accesslog: {disabled: true}}',
    `storage: {filesystem: {rootdirectory: ${JSON.stringify(storage)}}, delete: {enabled: true}}`,
    'http:',
    `  addr: 127.0.0.1:${port}`,
  ];
  if (files.cert && files.key) {
    lines.push('  tls:', `    certificate: ${JSON.stringify(files.cert)}`, `    key: ${JSON.stringify(files.key)}`);
    if (opts.clientCa) lines.push('    clientcas:', `      - ${JSON.stringify(opts.clientCa)}`);
  }
  if (files.htpasswd) {
    lines.push('auth:', '  htpasswd:', '    realm: test-realm', `    path: ${JSON.stringify(files.htpasswd)}`);
  } else if (opts.tokenAuth) {
    const t = opts.tokenAuth;
    lines.push('auth:', '  token:', `    realm: ${JSON.stringify(t.realm)}`, `    service: ${JSON.stringify(t.service)}`,
      `    issuer: ${JSON.stringify(t.issuer)}`, `    rootcertbundle: ${JSON.stringify(t.rootcertbundle)}`);
  }
  return `${lines.join('\n')}\n`;
}

async function waitReady(url: string, caFile: string | undefined, child: ChildProcess, stderr: () => string): Promise<void> {
  const dispatcher = new Agent({ connect: caFile ? { ca: readFileSync(caFile, 'utf8') } : {} });
  const deadline = Date.now() + 15_000;
  try {
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`docker-registry exited with ${child.exitCode}: ${stderr()}`);
      try {
        const res = await request(`${url}/v2/`, { dispatcher });
        await res.body.dump();
        return;
      } catch (e) {
        // Anything but a refused connection means it is listening (mutual TLS fails the handshake).
        if ((e as NodeJS.ErrnoException).code !== 'ECONNREFUSED') return;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    throw new Error(`docker-registry did not answer on ${url} within 15 s: ${stderr()}`);
  } finally {
    await dispatcher.close();
  }
}

export async function startRegistry(opts: StartRegistryOptions = {}): Promise<RunningRegistry> {
  const dir = mkdtempSync(join(tmpdir(), 'nip-registry-'));
  try {
    const port = opts.port ?? await freePort();
    const files: { htpasswd?: string; cert?: string; key?: string } = {};
    let caFile: string | undefined;
    if (opts.tls) {
      const ca = makeCa(dir);
      caFile = ca.caFile;
      Object.assign(files, issueServerCert(ca, dir));
    }
    if (opts.htpasswd) {
      files.htpasswd = join(dir, 'htpasswd');
      execFileSync('htpasswd', ['-Bbc', files.htpasswd, opts.htpasswd.user, opts.htpasswd.password], { stdio: 'ignore' });
    }
    const storage = opts.storageDir ?? join(dir, 'storage');
    const config = join(dir, 'config.yml');
    writeFileSync(config, configYaml(port, storage, opts, files));
    const child = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr?.on('data', (d: Buffer) => { err = (err + d.toString()).slice(-4000); });
    const host = `127.0.0.1:${port}`;
    const url = `${opts.tls ? 'https' : 'http'}://${host}`;
    const stop = async (): Promise<void> => {
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        const exited = new Promise((r) => child.once('exit', r));
        process.kill(child.pid, 'SIGTERM');
        const timer = setTimeout(() => { if (child.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGKILL'); }, 3000);
        await exited;
        clearTimeout(timer);
      }
      rmSync(dir, { recursive: true, force: true });
    };
    try {
      await waitReady(url, caFile, child, () => err);
    } catch (e) {
      await stop();
      throw e;
    }
    return { host, url, dir, storageDir: storage, ...(caFile ? { caFile } : {}), stop };
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}
