// One registry host: scheme choice, credentials, the 401 challenge dance (Basic or Bearer token,
// cached, refreshed once), and manual redirects that drop Authorization when they leave the host.
// Credentials, and tokens minted for them, only go to the registry itself and to the realm its
// own 401 names: a 401 or 403 from a redirect target is that host's error, never a re-auth.
import { request, type Dispatcher } from 'undici';
import { PivotError } from '../errors.ts';
import { log } from '../log.ts';
import {
  basicHeader, lookupCredentials, parseWwwAuthenticate, tokenFromResponse, tokenUrl,
  type AuthFile, type CachedToken, type Credentials,
} from './auth.ts';
import { MAX_TOKEN_BYTES, readCapped, type PullBudget } from './bounds.ts';
import { extraCas, makeDispatcher, networkError, networkStage, type Timeouts } from './transport.ts';

export interface SessionContext {
  authFiles: AuthFile[];
  /** The auth files searched, for messages when nothing matched. */
  authSearch: string[];
  certDir?: string;
  timeouts: Timeouts;
}

export interface RequestOptions {
  method?: 'GET' | 'HEAD';
  headers?: Record<string, string>;
  /** Short description for errors: "manifest ns/app:v1". */
  what: string;
  /** The pull's deadline: aborts the request and its body mid-transfer when it runs out. */
  budget?: PullBudget;
}

/** A response, with the host that actually served it (a redirect target, maybe). */
export type RegistryResponse = Dispatcher.ResponseData & { host: string };

/** Token values go into a header: anything outside RFC 6750's b64token is refused up front. */
const TOKEN_VALUE = /^Bearer [A-Za-z0-9\-._~+/]+=*$/;

/** Docker Hub's API is not served at docker.io itself. */
function endpointOf(registry: string): string {
  return registry === 'docker.io' ? 'registry-1.docker.io' : registry;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 5;

export class RegistrySession {
  readonly registry: string;
  readonly insecure: boolean;
  private readonly ctx: SessionContext;
  private readonly dispatcher: Dispatcher;
  private scheme: 'https' | 'http';
  /** Per repository: Bearer tokens are scoped to one repository. */
  private readonly tokens = new Map<string, CachedToken>();
  /** Per repository too: auth.json keys can give host/ns/repo its own credentials. */
  private readonly basic = new Map<string, string>();

  constructor(registry: string, insecure: boolean, ctx: SessionContext) {
    this.registry = registry;
    this.insecure = insecure;
    this.ctx = ctx;
    // insecure = true (containers-registries.conf(5)) means: TLS without verification, and plain
    // HTTP when the registry does not speak TLS at all. https is always tried first.
    this.scheme = 'https';
    const certs = extraCas(registry, ctx.certDir);
    this.dispatcher = makeDispatcher({ cas: certs.pems, ...(certs.client ? { client: certs.client } : {}), timeouts: ctx.timeouts, insecureTls: insecure });
  }

  get timeouts(): Timeouts {
    return this.ctx.timeouts;
  }

  get origin(): string {
    return `${this.scheme}://${endpointOf(this.registry)}`;
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }

  credentials(repository: string): Credentials | undefined {
    return lookupCredentials(this.ctx.authFiles, this.registry, repository);
  }

  private authError(repository: string, status: number, detail: string): PivotError {
    const creds = this.credentials(repository);
    const source = creds
      ? `credentials from ${creds.file} (key ${JSON.stringify(creds.key)})`
      : `no credentials (searched ${this.ctx.authSearch.join(', ') || 'no auth file'})`;
    return new PivotError('auth', `registry ${this.registry} refused ${repository} with HTTP ${status} using ${source}${detail ? `: ${detail}` : ''}`, {
      fix: creds
        ? `correct the ${JSON.stringify(creds.key)} entry in ${creds.file} (e.g. podman login --authfile ${creds.file} ${this.registry})`
        : `add credentials for ${this.registry} to an auth file and pass it with --authfile`,
      facts: { registry: this.registry, repository, status, authfile: creds?.file ?? null },
      permanent: false,
    });
  }

  /** Answers a 401 challenge from the registry itself: sets Basic, or fetches a Bearer token. */
  private async authenticate(challengeHeader: string, repository: string, budget: PullBudget | undefined): Promise<void> {
    const challenges = parseWwwAuthenticate(challengeHeader);
    const creds = this.credentials(repository);
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (bearer) {
      let url: URL;
      try {
        url = tokenUrl(bearer, repository);
      } catch {
        throw this.authError(repository, 401, 'the Bearer challenge has no realm');
      }
      if (url.protocol !== 'https:' && url.protocol !== 'http:') {
        throw new PivotError('auth', `registry ${this.registry} names a token realm that is not an http(s) URL (${JSON.stringify(url.protocol)})`, {
          fix: `check the auth configuration of ${this.registry}`,
          facts: { registry: this.registry },
          permanent: true,
        });
      }
      if (creds && url.protocol === 'http:' && this.scheme === 'https') {
        throw new PivotError('auth', `registry ${this.registry} is HTTPS but names the plain-HTTP token realm ${url.host}; the credentials from ${creds.file} are not sent over plain HTTP`, {
          fix: `have the registry's token realm served over https (its auth configuration), or remove the ${JSON.stringify(creds.key)} entry from ${creds.file} to pull anonymously`,
          facts: { registry: this.registry, realm: url.host, authfile: creds.file },
          permanent: true,
        });
      }
      const what = `a token for ${repository}`;
      const guard = { host: url.host, what, timeouts: this.ctx.timeouts, overTls: url.protocol === 'https:', ...(budget ? { budget } : {}) };
      let res: Dispatcher.ResponseData;
      try {
        res = await request(url, { dispatcher: this.dispatcher, headers: creds ? { authorization: basicHeader(creds) } : {}, ...(budget ? { signal: budget.signal } : {}) });
      } catch (err) {
        if (budget?.expired()) throw budget.error(url.host, what);
        throw networkError(err, url.host, what, url.protocol === 'https:', this.ctx.timeouts);
      }
      if (res.statusCode !== 200) {
        await res.body.dump();
        throw this.authError(repository, res.statusCode, `token server ${url.origin}${url.pathname} said HTTP ${res.statusCode}`);
      }
      const body = await readCapped(res.body, MAX_TOKEN_BYTES, guard, res.headers['content-length']);
      let doc: unknown;
      try {
        doc = JSON.parse(body.toString('utf8'));
      } catch {
        doc = undefined;
      }
      const token = tokenFromResponse(doc);
      if (!token) throw this.authError(repository, 401, `token server ${url.origin}${url.pathname} returned no token`);
      if (!TOKEN_VALUE.test(token.header)) {
        throw new PivotError('auth', `token server ${url.host} returned a token for ${repository} with characters an HTTP header cannot carry`, {
          fix: `check the token server at ${url.host} (the realm registry ${this.registry} names): asking again gets the same token`,
          facts: { registry: this.registry, realm: url.host, repository },
          permanent: true,
        });
      }
      this.tokens.set(repository, token);
      return;
    }
    if (challenges.some((c) => c.scheme === 'basic')) {
      if (!creds) throw this.authError(repository, 401, '');
      this.basic.set(repository, basicHeader(creds));
      return;
    }
    throw this.authError(repository, 401, `unsupported challenge ${JSON.stringify(challengeHeader.split(' ')[0] ?? '')}`);
  }

  private authHeader(repository: string): string | undefined {
    const t = this.tokens.get(repository);
    if (t && t.expiresAt > Date.now()) return t.header;
    return this.basic.get(repository);
  }

  /**
   * GET/HEAD `path` (under /v2/) for `repository`. Returns any status except 401/403 (which become
   * auth errors) and redirects (which are followed). The caller must consume or dump the body.
   */
  async request(path: string, repository: string, opts: RequestOptions): Promise<RegistryResponse> {
    let refreshed = false;
    for (;;) {
      const { res, url } = await this.send(`${this.origin}${path}`, repository, opts);
      // this.origin, not a copy from before the request: an insecure registry may have fallen back to http.
      const foreign = url.origin !== new URL(this.origin).origin;
      if ((res.statusCode === 401 || res.statusCode === 403) && foreign) {
        await res.body.dump();
        throw new PivotError('registry', `${opts.what}: ${url.host}, where registry ${this.registry} redirected the request, answered HTTP ${res.statusCode}; credentials for ${this.registry} are never sent to another host`, {
          fix: `check the storage redirect (CDN) that ${this.registry} uses: ${url.host} must accept the redirected URL without credentials`,
          facts: { host: url.host, registry: this.registry, status: res.statusCode },
        });
      }
      if (res.statusCode === 401) {
        const challenge = String(res.headers['www-authenticate'] ?? '');
        await res.body.dump();
        if (refreshed || !challenge) throw this.authError(repository, 401, '');
        this.tokens.delete(repository);
        await this.authenticate(challenge, repository, opts.budget);
        refreshed = true;
        continue;
      }
      if (res.statusCode === 403) {
        await res.body.dump();
        throw this.authError(repository, 403, 'access denied');
      }
      return Object.assign(res, { host: url.host });
    }
  }

  private async send(url: string, repository: string, opts: RequestOptions): Promise<{ res: Dispatcher.ResponseData; url: URL }> {
    let target = new URL(url);
    const home = new URL(this.origin).origin;
    const budget = opts.budget;
    for (let hop = 0; ; hop++) {
      const sameHost = target.origin === home;
      const auth = sameHost ? this.authHeader(repository) : undefined;
      let res: Dispatcher.ResponseData;
      try {
        res = await request(target, {
          method: opts.method ?? 'GET',
          dispatcher: this.dispatcher,
          headers: { ...opts.headers, ...(auth ? { authorization: auth } : {}) },
          ...(budget ? { signal: budget.signal } : {}),
        });
      } catch (err) {
        if (budget?.expired()) throw budget.error(target.host, opts.what);
        if (this.insecure && this.scheme === 'https' && hop === 0 && networkStage(err) === 'tls') {
          log().info({ registry: this.registry }, 'insecure registry does not speak TLS; using plain HTTP');
          this.scheme = 'http';
          return this.send(`${this.origin}${target.pathname}${target.search}`, repository, opts);
        }
        throw networkError(err, target.host, opts.what, target.protocol === 'https:', this.ctx.timeouts);
      }
      if (!REDIRECTS.has(res.statusCode)) return { res, url: target };
      await res.body.dump();
      const location = res.headers.location;
      if (typeof location !== 'string' || hop >= MAX_REDIRECTS) {
        throw new PivotError('registry', `${target.host} sent ${hop >= MAX_REDIRECTS ? 'too many redirects' : 'a redirect without Location'} for ${opts.what}`, {
          fix: 'check the registry or mirror configuration',
          facts: { host: target.host, registry: this.registry },
          permanent: true,
        });
      }
      let next: URL;
      try {
        next = new URL(location, target);
      } catch {
        next = new URL('invalid:');
      }
      if (next.protocol !== 'https:' && next.protocol !== 'http:') {
        throw new PivotError('registry', `${target.host} redirected ${opts.what} to ${JSON.stringify(location.slice(0, 200))}, which is not an http(s) URL`, {
          fix: `check the registry at ${target.host}: only http and https redirects are followed`,
          facts: { host: target.host, registry: this.registry },
          permanent: true,
        });
      }
      if (next.origin !== home) log().debug({ from: target.host, to: next.host }, 'following redirect to another host without the registry Authorization');
      target = next;
    }
  }
}

/** Sessions shared across sources of one pull, one per registry host and scheme. */
export class SessionPool {
  private readonly ctx: SessionContext;
  private readonly sessions = new Map<string, RegistrySession>();
  constructor(ctx: SessionContext) {
    this.ctx = ctx;
  }
  get(registry: string, insecure: boolean): RegistrySession {
    const key = `${insecure ? 'insecure' : 'secure'}:${registry}`;
    let s = this.sessions.get(key);
    if (!s) {
      s = new RegistrySession(registry, insecure, this.ctx);
      this.sessions.set(key, s);
    }
    return s;
  }
  async close(): Promise<void> {
    await Promise.all([...this.sessions.values()].map((s) => s.close()));
  }
}
