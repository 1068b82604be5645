// Credentials per containers-auth.json(5) and the registry auth flows (anonymous, Basic, Bearer
// token). Lookup and challenge parsing are pure; only readAuthFiles touches the disk.
import { readFileSync } from 'node:fs';
import { PivotError, isErrno } from '../errors.ts';

export const DEFAULT_AUTH_FILES = ['/run/containers/0/auth.json', '/root/.docker/config.json'];

export interface Credentials {
  username: string;
  password: string;
  /** Which file and key they came from (for messages; never the secret). */
  file: string;
  key: string;
}

export interface AuthFile {
  path: string;
  auths: Record<string, { auth?: string; username?: string; password?: string }>;
}

/** The files to consult, in order: --authfile alone when given, else the documented search. */
export function authFileCandidates(authfile: string | undefined, env: NodeJS.ProcessEnv = process.env): string[] {
  if (authfile) return [authfile];
  return [...(env.REGISTRY_AUTH_FILE ? [env.REGISTRY_AUTH_FILE] : []), ...DEFAULT_AUTH_FILES];
}

/** Reads those that exist. An explicit --authfile that is missing or broken is an error. */
export function readAuthFiles(paths: string[], explicit: boolean): AuthFile[] {
  const out: AuthFile[] = [];
  for (const path of paths) {
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT') && !explicit) continue;
      throw new PivotError('config', `auth file ${path} cannot be read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
        path,
        fix: 'pass an existing containers-auth.json(5) file to --authfile',
      });
    }
    try {
      const doc = JSON.parse(text) as { auths?: AuthFile['auths'] };
      out.push({ path, auths: doc.auths ?? {} });
    } catch {
      throw new PivotError('config', `auth file ${path} is not valid JSON`, { path, fix: `fix the JSON in ${path}` });
    }
  }
  return out;
}

/** Legacy Docker keys look like https://index.docker.io/v1/; reduce them to host[/path]. */
export function normaliseAuthKey(key: string): string {
  let k = key.replace(/^https?:\/\//, '').replace(/\/+$/, '');
  if (/^[^/]+\/v[12]$/.test(k)) k = k.replace(/\/v[12]$/, '');
  if (k === 'index.docker.io' || k === 'registry-1.docker.io') k = 'docker.io';
  return k;
}

/** Keys to try for one repository, most specific first: host/ns/repo, host/ns, host. */
export function authKeysFor(registry: string, repository: string): string[] {
  const parts = repository.split('/');
  const keys: string[] = [];
  for (let n = parts.length; n >= 1; n--) keys.push(`${registry}/${parts.slice(0, n).join('/')}`);
  keys.push(registry);
  return keys;
}

/** Pure: the first matching entry across files (in order) and keys (most specific first). */
export function lookupCredentials(files: AuthFile[], registry: string, repository: string): Credentials | undefined {
  const keys = authKeysFor(registry, repository);
  for (const file of files) {
    const normalised = new Map(Object.entries(file.auths).map(([k, v]) => [normaliseAuthKey(k), { key: k, v }]));
    for (const key of keys) {
      const hit = normalised.get(key);
      if (!hit) continue;
      if (hit.v.auth) {
        const decoded = Buffer.from(hit.v.auth, 'base64').toString('utf8');
        const colon = decoded.indexOf(':');
        if (colon < 0) {
          throw new PivotError('config', `auth file ${file.path}: entry ${JSON.stringify(hit.key)} is not base64 of user:password`, {
            path: file.path,
            field: `auths.${hit.key}.auth`,
            fix: `re-create the entry, e.g. with 'podman login --authfile ${file.path} ${registry}'`,
          });
        }
        return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1), file: file.path, key: hit.key };
      }
      if (hit.v.username !== undefined) return { username: hit.v.username, password: hit.v.password ?? '', file: file.path, key: hit.key };
    }
  }
  return undefined;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Pure: parses WWW-Authenticate (RFC 7235): scheme, then k=v or k="quoted, with \\escapes". */
export function parseWwwAuthenticate(header: string): Challenge[] {
  const out: Challenge[] = [];
  let i = 0;
  const s = header;
  const skipWs = (): void => { while (i < s.length && /[\s,]/.test(s[i]!)) i++; };
  while (i < s.length) {
    skipWs();
    const m = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+/.exec(s.slice(i));
    if (!m) break;
    const scheme = m[0];
    i += scheme.length;
    const params: Record<string, string> = {};
    for (;;) {
      while (i < s.length && /\s/.test(s[i]!)) i++;
      const km = /^([A-Za-z0-9_-]+)\s*=\s*/.exec(s.slice(i));
      if (!km) break;
      i += km[0].length;
      let value = '';
      if (s[i] === '"') {
        i++;
        while (i < s.length && s[i] !== '"') {
          if (s[i] === '\\' && i + 1 < s.length) i++;
          value += s[i];
          i++;
        }
        i++;
      } else {
        const vm = /^[^\s,]*/.exec(s.slice(i))!;
        value = vm[0];
        i += value.length;
      }
      params[km[1]!.toLowerCase()] = value;
      while (i < s.length && /\s/.test(s[i]!)) i++;
      if (s[i] === ',') i++;
      else break;
    }
    out.push({ scheme: scheme.toLowerCase(), params });
  }
  return out;
}

export function basicHeader(c: Credentials): string {
  return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
}

/** Pure: the token endpoint URL for a Bearer challenge and a pull of `repository`. */
export function tokenUrl(challenge: Challenge, repository: string): URL {
  const realm = challenge.params.realm;
  if (!realm) throw new Error('Bearer challenge without realm');
  const url = new URL(realm);
  if (challenge.params.service) url.searchParams.set('service', challenge.params.service);
  url.searchParams.set('scope', `repository:${repository}:pull`);
  return url;
}

export interface CachedToken {
  header: string;
  expiresAt: number;
}

/** Pure: a token response body -> Authorization header and expiry (60 s when unspecified). */
export function tokenFromResponse(body: unknown, now = Date.now()): CachedToken | undefined {
  const b = body as { token?: string; access_token?: string; expires_in?: number };
  const token = b?.token ?? b?.access_token;
  if (typeof token !== 'string' || token.length === 0) return undefined;
  const ttl = typeof b.expires_in === 'number' && b.expires_in > 0 ? b.expires_in : 60;
  // Renew a little early so a token does not expire between check and use.
  return { header: `Bearer ${token}`, expiresAt: now + Math.max(1, ttl - 5) * 1000 };
}
