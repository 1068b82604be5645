// HTTP plumbing for registries: one undici dispatcher per registry host (system CAs plus
// certs.d or --cert-dir CAs, HTTP(S)_PROXY/NO_PROXY), network error classification that says
// whether DNS, connect or TLS failed, and the retry/backoff/Retry-After/Range maths (pure).
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { rootCertificates } from 'node:tls';
import { Agent, EnvHttpProxyAgent, type Dispatcher } from 'undici';
import { PivotError, isErrno } from '../errors.ts';

export const DEFAULT_CERTS_D = '/etc/containers/certs.d';

export interface Timeouts {
  pullSeconds: number;
  readSeconds: number;
  connectSeconds: number;
}

export interface CertDirContents {
  /** Extra CA PEMs (*.crt). */
  pems: string[];
  files: string[];
  /** A client certificate for mutual TLS (NAME.cert with NAME.key), per containers-certs.d(5). */
  client?: { cert: string; key: string; file: string };
}

/** TLS material for one registry: --cert-dir when given, else certs.d/HOST[:PORT]/. */
export function extraCas(registry: string, certDir: string | undefined, certsD = DEFAULT_CERTS_D): CertDirContents {
  const dir = certDir ?? join(certsD, registry);
  let names: string[];
  try {
    names = readdirSync(dir).sort();
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ENOTDIR') && certDir === undefined) return { files: [], pems: [] };
    throw new PivotError('config', `certificate directory ${dir} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
      path: dir,
      fix: 'pass a readable directory of *.crt CA files to --cert-dir',
    });
  }
  const files = names.filter((n) => n.endsWith('.crt')).map((n) => join(dir, n));
  const out: CertDirContents = { files, pems: files.map((f) => readFileSync(f, 'utf8')) };
  const certName = names.find((n) => n.endsWith('.cert'));
  if (certName) {
    const keyName = `${certName.slice(0, -'.cert'.length)}.key`;
    if (!names.includes(keyName)) {
      throw new PivotError('config', `client certificate ${join(dir, certName)} has no matching ${keyName}`, {
        path: join(dir, certName),
        fix: `put the private key next to it as ${join(dir, keyName)}, or remove the .cert file`,
      });
    }
    out.client = { cert: readFileSync(join(dir, certName), 'utf8'), key: readFileSync(join(dir, keyName), 'utf8'), file: join(dir, certName) };
  }
  return out;
}

/** First non-empty of the lowercase and uppercase spellings (an empty one must not hide the other). */
const envOf = (env: NodeJS.ProcessEnv, name: string): string | undefined =>
  env[name.toLowerCase()] || env[name.toUpperCase()] || undefined;

/** A dispatcher for one registry host. Redirects are never followed here (see session.ts). */
export function makeDispatcher(opts: { cas: string[]; client?: { cert: string; key: string }; timeouts: Timeouts; insecureTls?: boolean; env?: NodeJS.ProcessEnv }): Dispatcher {
  const tlsOpts = {
    ...(opts.cas.length ? { ca: [...rootCertificates, ...opts.cas] } : {}),
    ...(opts.client ? { cert: opts.client.cert, key: opts.client.key } : {}),
    ...(opts.insecureTls ? { rejectUnauthorized: false } : {}),
  };
  const common = {
    connect: { ...tlsOpts, timeout: opts.timeouts.connectSeconds * 1000 },
    headersTimeout: opts.timeouts.readSeconds * 1000,
    bodyTimeout: opts.timeouts.readSeconds * 1000,
  };
  const env = opts.env ?? process.env;
  const httpProxy = envOf(env, 'http_proxy');
  const httpsProxy = envOf(env, 'https_proxy');
  if (httpProxy || httpsProxy) {
    return new EnvHttpProxyAgent({
      ...common,
      requestTls: tlsOpts,
      ...(httpProxy ? { httpProxy } : {}),
      // Like curl: without HTTPS_PROXY, https goes through HTTP_PROXY too.
      ...(httpsProxy || httpProxy ? { httpsProxy: httpsProxy ?? httpProxy } : {}),
      noProxy: envOf(env, 'no_proxy') ?? '',
    });
  }
  return new Agent(common);
}

const DNS_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EAI_NONAME', 'EAI_FAIL']);
const CONNECT_CODES = new Set(['ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'UND_ERR_CONNECT_TIMEOUT', 'EADDRNOTAVAIL']);
const TLS_CODE = /^(ERR_TLS|ERR_SSL|CERT_|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|EPROTO|ERR_OSSL|HOSTNAME_MISMATCH)/;
/** A verdict on the certificate, not a handshake that broke: another attempt gets the same one. */
const CERT_CODE = /^(CERT_|UNABLE_TO_|SELF_SIGNED|DEPTH_ZERO|HOSTNAME_MISMATCH|ERR_TLS_CERT_ALTNAME_INVALID)/;

export type NetworkStage = 'dns' | 'connect' | 'tls' | 'transfer';

function errCode(err: unknown): string | undefined {
  let e = err as { code?: unknown; cause?: unknown; errors?: unknown[] } | undefined;
  for (let depth = 0; e && depth < 4; depth++) {
    if (typeof e.code === 'string' && e.code !== 'UND_ERR') return e.code;
    if (Array.isArray(e.errors) && e.errors.length) e = e.errors[0] as typeof e;
    else e = e.cause as typeof e;
  }
  return undefined;
}

/** Pure: which stage an error from undici belongs to. */
export function networkStage(err: unknown): NetworkStage {
  const code = errCode(err) ?? '';
  if (DNS_CODES.has(code)) return 'dns';
  if (CONNECT_CODES.has(code)) return 'connect';
  if (TLS_CODE.test(code)) return 'tls';
  return 'transfer';
}

/** facts.code of the pull deadline (bounds.ts PullBudget), for the log; code branches on reason 'pull-deadline'. */
export const DEADLINE_CODE = 'PULL_DEADLINE';

/** HTTP statuses worth another attempt (with backoff, honouring Retry-After). */
export const TRANSIENT_STATUS: ReadonlySet<number> = new Set([408, 429, 500, 502, 503, 504]);

const RETRYABLE_CODES = new Set([
  'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED', 'ECONNABORTED',
  'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_RES_CONTENT_LENGTH_MISMATCH', 'UND_ERR_REQ_CONTENT_LENGTH_MISMATCH',
]);
/**
 * Answers that come out the same however often they are asked: a header value undici refuses
 * (a CRLF in a token), an unsupported URL scheme, a header block over the limit, a response that
 * is not HTTP. They are never retried.
 */
const PERMANENT_CODE = /^(UND_ERR_INVALID_ARG|UND_ERR_HEADERS_OVERFLOW|UND_ERR_RESPONSE_EXCEEDED_MAX_SIZE|UND_ERR_NOT_SUPPORTED|UND_ERR_INFO|ERR_INVALID_URL|HPE_)/;

/** Pure: whether an error code names a permanent answer (see PERMANENT_CODE). */
export function isPermanentCode(code: string): boolean {
  return PERMANENT_CODE.test(code);
}

/** undici's HTTPParserError (a response that is not HTTP) often carries no code at all. */
function isParserError(err: unknown): boolean {
  let e = err as { name?: unknown; cause?: unknown } | undefined;
  for (let depth = 0; e && depth < 4; depth++, e = e.cause as typeof e) if (e.name === 'HTTPParserError') return true;
  return false;
}

/** A transient answer (HTTP 408, 429, 5xx) or a short body: worth another attempt, after Retry-After if given. */
export class TransientFailure extends Error {
  readonly retryAfterMs: number | undefined;
  constructor(message: string, retryAfterMs?: number) {
    super(message);
    this.retryAfterMs = retryAfterMs;
  }
}

/**
 * Whether a failed request or transfer is worth another attempt: a transient answer, a network
 * PivotError (DNS, connect, TLS handshake, reset, stall) that is not permanent, not the pull's
 * deadline and not a refused certificate, or an undici or socket error whose code (anywhere
 * along the cause chain) is one of the transient ones. The one retry classification for
 * manifests and blobs; retryWaitMs is the one backoff.
 */
export function isRetryableError(err: unknown): boolean {
  if (err instanceof TransientFailure) return true;
  if (err instanceof PivotError) return err.kind === 'network' && !err.permanent && err.reason !== 'pull-deadline' && err.reason !== 'tls-certificate';
  const own = (err as { code?: unknown } | undefined)?.code;
  const code = errCode(err) ?? (typeof own === 'string' ? own : '');
  return RETRYABLE_CODES.has(code);
}

/** What the timeout codes mean, with the config field that sets each. */
function timeoutText(code: string, host: string, t: Timeouts | undefined): [string, string] | undefined {
  if (!t) return undefined;
  if (code === 'UND_ERR_BODY_TIMEOUT') return [`no data from ${host} for ${t.readSeconds} s (timeouts.readSeconds, ${code})`, 'timeouts.readSeconds'];
  if (code === 'UND_ERR_HEADERS_TIMEOUT') return [`no response headers from ${host} within ${t.readSeconds} s (timeouts.readSeconds, ${code})`, 'timeouts.readSeconds'];
  if (code === 'UND_ERR_CONNECT_TIMEOUT') return [`connect to ${host} timed out after ${t.connectSeconds} s (timeouts.connectSeconds, ${code})`, 'timeouts.connectSeconds'];
  return undefined;
}

/** A PivotError naming the host and whether DNS, connect, TLS or the transfer failed. */
export function networkError(err: unknown, host: string, what: string, overTls = false, timeouts?: Timeouts): PivotError {
  if (err instanceof PivotError) return err;
  const stage = networkStage(err);
  const code = errCode(err) ?? (isParserError(err) ? 'HPE_INVALID_RESPONSE' : 'unknown');
  const detail = `${code}${err instanceof Error && err.message && !err.message.includes(code) ? `: ${err.message}` : ''}`;
  const text: Record<NetworkStage, [string, string]> = {
    dns: [`DNS lookup of ${host.replace(/:\d+$/, '')} failed (${detail})`, 'check the registry host name and the node\'s DNS servers'],
    connect: [`connect to ${host} failed (${detail})`, 'check that the registry is up and reachable (routes, firewall, HTTP(S)_PROXY/NO_PROXY)'],
    tls: [`TLS handshake with ${host} failed (${detail})`, `add the registry's CA to /etc/containers/certs.d/${host}/ca.crt or pass --cert-dir`],
    transfer: [`transfer from ${host} failed (${detail})`, overTls && code === 'UND_ERR_SOCKET'
      ? `check the network path; if the registry wants a client certificate, put NAME.cert and NAME.key in /etc/containers/certs.d/${host}/ or --cert-dir`
      : 'check the network path to the registry and retry'],
  };
  const timedOut = timeoutText(code, host, timeouts);
  const permanent = isPermanentCode(code);
  const [msg, fix] = timedOut
    ? [timedOut[0], `check the network path to the registry, or raise ${timedOut[1]} in the config`]
    : permanent
      ? [`${host} sent an answer that cannot be used (${detail})`, `check the registry at ${host}: retrying would get the same answer`]
      : text[stage];
  return new PivotError('network', `${msg} while fetching ${what}`, {
    fix,
    facts: { host, stage, code, ...(timedOut ? { limit: timedOut[1] } : {}) },
    cause: err,
    ...(permanent ? { permanent: true } : stage === 'transfer' ? { reason: 'transfer' as const } : CERT_CODE.test(code) ? { reason: 'tls-certificate' as const } : {}),
  });
}

// ---- retry maths (pure) --------------------------------------------------------------------

export interface Backoff {
  baseMs: number;
  maxMs: number;
  maxAttempts: number;
}
export const DEFAULT_BACKOFF: Backoff = { baseMs: 250, maxMs: 10_000, maxAttempts: 6 };

/** Full-jitter exponential backoff: uniform in [0, min(max, base * 2^attempt)]. */
export function backoffDelay(attempt: number, b: Backoff = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const cap = Math.min(b.maxMs, b.baseMs * 2 ** attempt);
  return Math.floor(random() * cap);
}

/** How long to wait after failed attempt `attempt` (0-based) of a retryable failure: Retry-After, else the backoff. */
export function retryWaitMs(err: unknown, attempt: number, b: Backoff = DEFAULT_BACKOFF): number {
  return (err instanceof TransientFailure ? err.retryAfterMs : undefined) ?? backoffDelay(attempt, b);
}

/** Retry-After: delta-seconds or an HTTP-date; undefined when absent or unparseable. */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = Array.isArray(value) ? value[0] : value;
  if (v === undefined || v.trim() === '') return undefined;
  if (/^\d+$/.test(v.trim())) return Number(v.trim()) * 1000;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, t - now);
}

/** Pure: the Range header to resume at `offset`, or undefined to start over. */
export function rangeHeader(offset: number): string | undefined {
  return offset > 0 ? `bytes=${offset}-` : undefined;
}

/**
 * Pure: what to do with a (re)started response. 206 must start exactly at `offset`; a 200 means
 * the server ignored the Range, so the first `offset` bytes must be skipped (already hashed).
 */
export function resumePlan(status: number, contentRange: string | undefined, offset: number): { skip: number } | { error: string } {
  if (status === 200) return { skip: offset };
  if (status !== 206) return { error: `unexpected HTTP ${status}` };
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(contentRange ?? '');
  if (!m) return { error: `206 without a valid Content-Range (${contentRange ?? 'none'})` };
  if (Number(m[1]) !== offset) return { error: `asked for bytes from ${offset}, got from ${m[1]}` };
  return { skip: 0 };
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
