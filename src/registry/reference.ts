// Image references per the docker reference grammar (distribution/reference), parsed by hand so
// that a malformed one is reported at the exact character an operator has to fix.
import { PivotError } from '../errors.ts';

export const DOCKER_HUB = 'docker.io';

export interface ImageReference {
  /** host[:port], e.g. quay.io or 127.0.0.1:5000; docker.io for Docker Hub. */
  registry: string;
  /** Path inside the registry, e.g. library/busybox. */
  repository: string;
  tag?: string;
  digest?: string;
  /** registry/repository[:tag][@digest] */
  toString(): string;
}

export interface ParseReferenceOptions {
  /** registries.conf unqualified-search-registries; the first one qualifies a short name. */
  unqualifiedSearch?: string[];
}

const MAX_NAME = 255;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST_ALGO = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*$/;

export function makeReference(registry: string, repository: string, tag?: string, digest?: string): ImageReference {
  return {
    registry,
    repository,
    ...(tag !== undefined ? { tag } : {}),
    ...(digest !== undefined ? { digest } : {}),
    toString() {
      return `${registry}/${repository}${tag !== undefined ? `:${tag}` : ''}${digest !== undefined ? `@${digest}` : ''}`;
    },
  };
}

function bad(text: string, index: number, why: string): PivotError {
  const ch = text[index];
  const at = ch === undefined ? `at the end (position ${index})` : `${JSON.stringify(ch)} at position ${index}`;
  return new PivotError('usage', `invalid image reference ${JSON.stringify(text)}: ${why}, ${at}`, {
    field: 'image',
    fix: 'write it as REGISTRY/REPOSITORY[:TAG][@sha256:DIGEST], lowercase, e.g. quay.io/org/image:4.16',
    facts: { reference: text, index, char: ch ?? null },
    reason: 'reference',
  });
}

const isAlnum = (c: string | undefined): boolean => c !== undefined && /[a-z0-9]/.test(c);

/** Index of the first character that breaks a path component, or -1 when it is valid. */
export function badIndexInComponent(s: string): number {
  if (s.length === 0) return 0;
  let i = 0;
  for (;;) {
    if (!isAlnum(s[i])) return i;
    while (i < s.length && isAlnum(s[i])) i++;
    if (i === s.length) return -1;
    if (s[i] === '.') i++;
    else if (s[i] === '_') i += s[i + 1] === '_' ? 2 : 1;
    else if (s[i] === '-') while (s[i] === '-') i++;
    else return i;
    if (i === s.length) return s.length - 1;
  }
}

/** Index of the first bad character of a host[:port], or -1. */
function badIndexInDomain(s: string): number {
  let host = s;
  const ipv6 = /^\[[0-9a-fA-F:.]+\]/.exec(s);
  let i = 0;
  if (ipv6) {
    i = ipv6[0].length;
  } else {
    const colon = s.indexOf(':');
    host = colon < 0 ? s : s.slice(0, colon);
    const labels = host.split('.');
    for (const label of labels) {
      if (label.length === 0) return i === 0 ? 0 : i - 1;
      for (let k = 0; k < label.length; k++) {
        const c = label[k]!;
        const ok = /[A-Za-z0-9]/.test(c) || (c === '-' && k > 0 && k < label.length - 1);
        if (!ok) return i + k;
      }
      i += label.length + 1;
    }
    i = host.length;
  }
  if (i === s.length) return -1;
  if (s[i] !== ':') return i;
  const port = s.slice(i + 1);
  if (port.length === 0) return i;
  const nonDigit = port.search(/[^0-9]/);
  return nonDigit < 0 ? -1 : i + 1 + nonDigit;
}

function looksLikeDomain(first: string): boolean {
  return first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase();
}

function normaliseHub(registry: string, repository: string): [string, string] {
  const reg = registry === 'index.docker.io' || registry === 'registry-1.docker.io' ? DOCKER_HUB : registry;
  if (reg === DOCKER_HUB && !repository.includes('/')) return [reg, `library/${repository}`];
  return [reg, repository];
}

export function parseReference(text: string, opts: ParseReferenceOptions = {}): ImageReference {
  if (text.length === 0) throw bad(text, 0, 'empty reference');
  let rest = text;
  let digest: string | undefined;
  const at = text.indexOf('@');
  if (at >= 0) {
    digest = text.slice(at + 1);
    rest = text.slice(0, at);
    const colon = digest.indexOf(':');
    if (colon <= 0) throw bad(text, at + 1 + Math.max(colon, 0), 'a digest is ALGORITHM:HEX');
    const algo = digest.slice(0, colon);
    const hex = digest.slice(colon + 1);
    if (!DIGEST_ALGO.test(algo)) throw bad(text, at + 1 + Math.max(0, algo.search(/[^a-z0-9+._-]/)), 'bad digest algorithm');
    const nonHex = hex.search(/[^a-f0-9]/);
    if (nonHex >= 0) throw bad(text, at + 1 + colon + 1 + nonHex, 'a digest is lowercase hex');
    if (algo === 'sha256' && hex.length !== 64) throw bad(text, at + 1 + colon + 1 + Math.min(hex.length, 64), `a sha256 digest has 64 hex digits, this one has ${hex.length}`);
    if (algo !== 'sha256') throw bad(text, at + 1, `only sha256 digests are supported, not ${algo}`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const lastColon = rest.lastIndexOf(':');
  if (lastColon > lastSlash) {
    tag = rest.slice(lastColon + 1);
    rest = rest.slice(0, lastColon);
    if (!TAG.test(tag)) {
      const idx = tag.length === 0 ? 0 : /^[A-Za-z0-9_]/.test(tag) ? Math.max(0, tag.search(/[^A-Za-z0-9_.-]/)) : 0;
      throw bad(text, lastColon + 1 + (tag.length > 128 ? 128 : idx), tag.length > 128 ? 'a tag has at most 128 characters' : 'bad tag');
    }
  }
  const parts = rest.split('/');
  let registry: string | undefined;
  let offset = 0;
  if (parts.length > 1 && looksLikeDomain(parts[0]!)) {
    registry = parts.shift()!;
    const badAt = badIndexInDomain(registry);
    if (badAt >= 0) throw bad(text, badAt, 'bad registry host');
    offset = registry.length + 1;
  }
  for (const part of parts) {
    const badAt = badIndexInComponent(part);
    if (badAt >= 0) {
      const why = /[A-Z]/.test(part[badAt] ?? '') ? 'repository names must be lowercase' : 'bad repository name';
      throw bad(text, offset + badAt, why);
    }
    offset += part.length + 1;
  }
  let repository = parts.join('/');
  if (registry === undefined) {
    const search = opts.unqualifiedSearch ?? [];
    if (search.length === 0) {
      throw new PivotError('usage', `image reference ${JSON.stringify(text)} has no registry and registries.conf lists no unqualified-search-registries`, {
        field: 'image',
        fix: `qualify it, e.g. docker.io/${repository.includes('/') ? repository : `library/${repository}`}, or set unqualified-search-registries in registries.conf`,
        facts: { reference: text },
        reason: 'reference',
      });
    }
    registry = search[0]!;
  }
  [registry, repository] = normaliseHub(registry, repository);
  if (registry.length + 1 + repository.length > MAX_NAME) throw bad(text, MAX_NAME, `a name has at most ${MAX_NAME} characters`);
  return makeReference(registry, repository, tag, digest);
}

/** For logs and errors: the reference with the part that selects content (tag or digest). */
export function refSuffix(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? 'latest';
}
