// One registry host: scheme choice, credentials, the 401 challenge dance (Basic or Bearer token,
// cached, refreshed once), and manual redirects that drop Authorization when they leave the host.
import { request, type Dispatcher } from 'undici';
import { PivotError } from '../errors.ts';
import { log } from '../log.ts';
import {
  basicHeader, lookupCredentials, parseWwwAuthenticate, tokenFromResponse, tokenUrl,
  type AuthFile, type CachedToken, type Credentials,
} from './auth.ts';
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
  signal?: AbortSignal;
}

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

  /** Answers a 401 challenge: sets Basic, or fetches a Bearer token for `repository`. */
  private async authenticate(challengeHeader: string, repository: string): Promise<void> {
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
      let res: Dispatcher.ResponseData;
      try {
        res = await request(url, { dispatcher: this.dispatcher, headers: creds ? { authorization: basicHeader(creds) } : {} });
      } catch (err) {
        throw networkError(err, url.host, `a token for ${repository}`);
      }
      if (res.statusCode !== 200) {
        await res.body.dump();
        throw this.authError(repository, res.statusCode, `token server ${url.origin}${url.pathname} said HTTP ${res.statusCode}`);
      }
      const token = tokenFromResponse(await res.body.json().catch(() => undefined));
      if (!token) throw this.authError(repository, 401, `token server ${url.origin}${url.pathname} returned no token`);
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
  async request(path: string, repository: string, opts: RequestOptions): Promise<Dispatcher.ResponseData> {
    let refreshed = false;
    for (;;) {
      const res = await this.send(`${this.origin}${path}`, repository, opts);
      if (res.statusCode === 401) {
        const challenge = String(res.headers['www-authenticate'] ?? '');
        await res.body.dump();
        if (refreshed || !challenge) throw this.authError(repository, 401, '');
        this.tokens.delete(repository);
        await this.authenticate(challenge, repository);
        refreshed = true;
        continue;
      }
      if (res.statusCode === 403) {
        await res.body.dump();
        throw this.authError(repository, 403, 'access denied');
      }
      return res;
    }
  }

  private async send(url: string, repository: string, opts: RequestOptions): Promise<Dispatcher.ResponseData> {
    let target = new URL(url);
    const home = new URL(this.origin).origin;
    for (let hop = 0; ; hop++) {
      const sameHost = target.origin === home;
      const auth = sameHost ? this.authHeader(repository) : undefined;
      let res: Dispatcher.ResponseData;
      try {
        res = await request(target, {
          method: opts.method ?? 'GET',
          dispatcher: this.dispatcher,
          headers: { ...opts.headers, ...(auth ? { authorization: auth } : {}) },
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
      } catch (err) {
        if ((err as Error).name === 'AbortError') throw err;
        if (this.insecure && this.scheme === 'https' && hop === 0 && networkStage(err) === 'tls') {
          log().info({ registry: this.registry }, 'insecure registry does not speak TLS; using plain HTTP');
          this.scheme = 'http';
          return this.send(`${this.origin}${target.pathname}${target.search}`, repository, opts);
        }
        throw networkError(err, target.host, opts.what, target.protocol === 'https:');
      }
      if (!REDIRECTS.has(res.statusCode)) return res;
      await res.body.dump();
      const location = res.headers.location;
      if (typeof location !== 'string' || hop >= MAX_REDIRECTS) {
        throw new PivotError('registry', `registry ${this.registry} sent ${hop >= MAX_REDIRECTS ? 'too many redirects' : 'a redirect without Location'} for ${opts.what}`, {
          fix: 'check the registry or mirror configuration',
        });
      }
      const next = new URL(location, target);
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
