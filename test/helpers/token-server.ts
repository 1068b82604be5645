// A small Docker token server (the `auth: token` flow) for tests. It signs RS256 JWTs with a
// self-signed certificate carried in the x5c header; distribution 2.8 accepts a token when that
// certificate chains to its `rootcertbundle`, so the bundle is the signer's own certificate.
//
//   const ts = await startTokenServer({ dir, users: { alice: 's3cret' } });
//   startRegistry({ tokenAuth: ts.registryConfig })
import { createSign, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { makeTokenSigner, type TokenAuthConfig } from './registry.ts';

export interface TokenServerOptions {
  /** Where the signing key and certificate are written. */
  dir: string;
  /** Accepted Basic credentials; without any, anonymous requests get pull tokens. */
  users?: Record<string, string>;
  /** Allow anonymous token requests even when users are set (read-only public repos). */
  anonymous?: boolean;
  service?: string;
  issuer?: string;
  expiresInSeconds?: number;
}

export interface TokenRequestLog {
  user: string | undefined;
  scope: string | undefined;
  service: string | undefined;
  status: number;
}

export interface RunningTokenServer {
  url: string;
  registryConfig: TokenAuthConfig;
  requests: TokenRequestLog[];
  stop(): Promise<void>;
}

const b64url = (b: Buffer | string): string => Buffer.from(b).toString('base64url');

export function signToken(keyPem: string, certDerB64: string, claims: Record<string, unknown>): string {
  const header = { typ: 'JWT', alg: 'RS256', x5c: [certDerB64] };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const sig = createSign('RSA-SHA256').update(input).sign(keyPem);
  return `${input}.${b64url(sig)}`;
}

/** `repository:a/b:pull,push` -> access claim entries. */
function accessOf(scopes: string[]): Array<{ type: string; name: string; actions: string[] }> {
  const out = [];
  for (const scope of scopes) {
    const parts = scope.split(':');
    if (parts.length < 3) continue;
    const type = parts[0]!;
    const actions = parts[parts.length - 1]!.split(',').filter(Boolean);
    const name = parts.slice(1, -1).join(':');
    out.push({ type, name, actions });
  }
  return out;
}

export async function startTokenServer(opts: TokenServerOptions): Promise<RunningTokenServer> {
  const signer = makeTokenSigner(opts.dir);
  const keyPem = readFileSync(signer.keyFile, 'utf8');
  const certDer = new X509Certificate(readFileSync(signer.certFile)).raw.toString('base64');
  const service = opts.service ?? 'test-registry';
  const issuer = opts.issuer ?? 'test-issuer';
  const requests: TokenRequestLog[] = [];
  const users = opts.users ?? {};
  const needAuth = Object.keys(users).length > 0 && !opts.anonymous;

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://x');
    const scopes = url.searchParams.getAll('scope');
    let user: string | undefined;
    let status = 200;
    const auth = req.headers.authorization;
    if (auth?.startsWith('Basic ')) {
      const [u, ...rest] = Buffer.from(auth.slice(6), 'base64').toString().split(':');
      user = u;
      if (users[u ?? ''] !== rest.join(':')) status = 401;
    } else if (needAuth) {
      status = 401;
    }
    requests.push({ user, scope: scopes.join(' ') || undefined, service: url.searchParams.get('service') ?? undefined, status });
    if (status !== 200) {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] }));
      return;
    }
    const now = Math.floor(Date.now() / 1000);
    const expiresIn = opts.expiresInSeconds ?? 300;
    const token = signToken(keyPem, certDer, {
      iss: issuer,
      sub: user ?? '',
      aud: url.searchParams.get('service') ?? service,
      exp: now + expiresIn,
      nbf: now - 10,
      iat: now,
      jti: `${now}-${requests.length}`,
      access: accessOf(scopes),
    });
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, access_token: token, expires_in: expiresIn, issued_at: new Date().toISOString() }));
  };

  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}/token`;
  return {
    url,
    registryConfig: { realm: url, service, issuer, rootcertbundle: signer.certFile },
    requests,
    stop: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
  };
}
