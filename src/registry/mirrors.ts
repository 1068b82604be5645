// registries.conf v2 (containers-registries.conf(5)) and its registries.conf.d/ drop-ins, turned
// into the ordered list of places to pull one image from: eligible mirrors first, then the
// primary location. Parsing reads files; resolution (sourcesFor) is pure.
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { PivotError, isErrno } from '../errors.ts';
import { makeReference, parseReference, type ImageReference } from './reference.ts';

export type PullFromMirror = 'all' | 'digest-only' | 'tag-only';

export interface MirrorEntry {
  location: string;
  insecure: boolean;
  pullFromMirror: PullFromMirror;
}

export interface RegistryEntry {
  /** What references it applies to: host[/path] or *.domain. */
  prefix: string;
  /** Where to pull instead; empty means the prefix itself. */
  location: string;
  insecure: boolean;
  blocked: boolean;
  mirrorByDigestOnly: boolean;
  mirrors: MirrorEntry[];
}

export interface RegistriesConf {
  unqualifiedSearch: string[];
  registries: RegistryEntry[];
  /** Files read, in order, for messages. */
  files: string[];
}

export interface Source {
  /** The reference rewritten to this location. */
  ref: ImageReference;
  /** registry/repository, for logs. */
  name: string;
  insecure: boolean;
  role: 'mirror' | 'primary';
  /** The reference as the user meant it (after qualifying a short name), before mirror rewriting. */
  original: ImageReference;
}

export interface SourcePlan {
  sources: Source[];
  /** Mirrors that do not apply to this reference, with the reason (for the log). */
  skipped: Array<{ name: string; reason: string }>;
  /** The [[registry]] entry that matched, if any. */
  entry?: RegistryEntry;
}

function confError(file: string, field: string, expected: string): PivotError {
  return new PivotError('config', `registries.conf ${file}: ${field} ${expected}`, {
    path: file,
    field,
    fix: `correct ${field} in ${file} (see containers-registries.conf(5))`,
  });
}

function str(v: unknown, file: string, field: string): string {
  if (v === undefined) return '';
  if (typeof v !== 'string') throw confError(file, field, 'must be a string');
  return v;
}
function bool(v: unknown, file: string, field: string): boolean {
  if (v === undefined) return false;
  if (typeof v !== 'boolean') throw confError(file, field, 'must be true or false');
  return v;
}

/** Pure: one parsed TOML document -> our shape. `file` names it in errors. */
export function parseRegistriesToml(doc: Record<string, unknown>, file: string): Partial<RegistriesConf> & { registries: RegistryEntry[] } {
  const out: Partial<RegistriesConf> & { registries: RegistryEntry[] } = { registries: [] };
  if (doc['unqualified-search-registries'] !== undefined) {
    const v = doc['unqualified-search-registries'];
    if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw confError(file, 'unqualified-search-registries', 'must be a list of strings');
    out.unqualifiedSearch = v as string[];
  }
  if (doc.registries !== undefined && doc.registry === undefined) {
    throw confError(file, 'registries', 'is the v1 format, which is not supported; use [[registry]] tables');
  }
  const regs = doc.registry ?? [];
  if (!Array.isArray(regs)) throw confError(file, 'registry', 'must be an array of tables ([[registry]])');
  regs.forEach((r: Record<string, unknown>, i) => {
    const f = `registry[${i}]`;
    const location = str(r.location, file, `${f}.location`);
    const prefix = str(r.prefix, file, `${f}.prefix`) || location;
    if (!prefix) throw confError(file, `${f}.location`, 'or prefix is required');
    const digestOnly = bool(r['mirror-by-digest-only'], file, `${f}.mirror-by-digest-only`);
    const mirrors = (r.mirror ?? []) as Array<Record<string, unknown>>;
    if (!Array.isArray(mirrors)) throw confError(file, `${f}.mirror`, 'must be an array of tables ([[registry.mirror]])');
    out.registries.push({
      prefix: prefix.replace(/^https?:\/\//, ''),
      location: location.replace(/^https?:\/\//, ''),
      insecure: bool(r.insecure, file, `${f}.insecure`),
      blocked: bool(r.blocked, file, `${f}.blocked`),
      mirrorByDigestOnly: digestOnly,
      mirrors: mirrors.map((m, k) => {
        const mf = `${f}.mirror[${k}]`;
        const loc = str(m.location, file, `${mf}.location`);
        if (!loc) throw confError(file, `${mf}.location`, 'is required');
        const pfm = str(m['pull-from-mirror'], file, `${mf}.pull-from-mirror`) || 'all';
        if (!['all', 'digest-only', 'tag-only'].includes(pfm)) throw confError(file, `${mf}.pull-from-mirror`, 'must be all, digest-only or tag-only');
        return {
          location: loc.replace(/^https?:\/\//, ''),
          insecure: bool(m.insecure, file, `${mf}.insecure`),
          pullFromMirror: (digestOnly ? 'digest-only' : pfm) as PullFromMirror,
        };
      }),
    });
  });
  return out;
}

function readToml(file: string): Record<string, unknown> {
  try {
    return parseToml(readFileSync(file, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof PivotError) throw err;
    throw new PivotError('config', `registries.conf ${file} cannot be read: ${(err as Error).message.split('\n')[0]}`, {
      path: file,
      fix: `fix the TOML syntax in ${file}`,
      cause: err,
    });
  }
}

/** Merges drop-ins the way containers/image does: later files replace same-prefix registries. */
export function mergeConfs(parts: Array<Partial<RegistriesConf> & { registries: RegistryEntry[] }>): Omit<RegistriesConf, 'files'> {
  let unqualifiedSearch: string[] = [];
  const byPrefix = new Map<string, RegistryEntry>();
  for (const p of parts) {
    if (p.unqualifiedSearch) unqualifiedSearch = p.unqualifiedSearch;
    for (const r of p.registries) {
      byPrefix.delete(r.prefix);
      byPrefix.set(r.prefix, r);
    }
  }
  return { unqualifiedSearch, registries: [...byPrefix.values()] };
}

/** Loads FILE and FILE's sibling registries.conf.d/*.conf. A missing main file means no config. */
export function loadRegistriesConf(file: string, explicit = false): RegistriesConf {
  const files: string[] = [];
  const parts = [];
  if (existsSync(file)) {
    files.push(file);
    parts.push(parseRegistriesToml(readToml(file), file));
  } else if (explicit) {
    throw new PivotError('config', `registries.conf ${file} does not exist`, { path: file, fix: 'pass an existing file to --registries-conf' });
  }
  const dropDir = join(dirname(file), `${basename(file)}.d`);
  let names: string[] = [];
  try {
    names = readdirSync(dropDir).filter((n) => n.endsWith('.conf')).sort();
  } catch (err) {
    if (!isErrno(err, 'ENOENT', 'ENOTDIR')) throw err;
  }
  for (const n of names) {
    const f = join(dropDir, n);
    files.push(f);
    parts.push(parseRegistriesToml(readToml(f), f));
  }
  return { ...mergeConfs(parts), files };
}

/** How well `prefix` matches `name` (host/path): -1 for no match, else the prefix length. */
export function prefixMatch(prefix: string, name: string): number {
  if (prefix.startsWith('*.')) {
    const host = name.split('/')[0]!.replace(/:\d+$/, '');
    return host.endsWith(prefix.slice(1)) ? prefix.length : -1;
  }
  if (name === prefix || name.startsWith(`${prefix}/`)) return prefix.length;
  return -1;
}

function splitLocation(location: string): { registry: string; repository: string } {
  const slash = location.indexOf('/');
  return slash < 0 ? { registry: location, repository: '' } : { registry: location.slice(0, slash), repository: location.slice(slash + 1) };
}

function rewrite(ref: ImageReference, entry: RegistryEntry, location: string): ImageReference {
  const name = `${ref.registry}/${ref.repository}`;
  // A wildcard prefix keeps the whole name; otherwise the prefix is replaced by the location.
  const rest = entry.prefix.startsWith('*.') ? name : name.slice(entry.prefix.length);
  const full = entry.prefix.startsWith('*.') ? location || name : `${location}${rest}`;
  const { registry, repository } = splitLocation(full);
  return makeReference(registry, repository.replace(/^\/+/, ''), ref.tag, ref.digest);
}

/** Pure: the ordered sources for `ref`, or a usage error when its registry is blocked. */
export function sourcesFor(ref: ImageReference, conf: Omit<RegistriesConf, 'files'>): SourcePlan {
  const name = `${ref.registry}/${ref.repository}`;
  let best: RegistryEntry | undefined;
  let bestLen = -1;
  for (const r of conf.registries) {
    const len = prefixMatch(r.prefix, name);
    if (len > bestLen) { best = r; bestLen = len; }
  }
  if (!best) return { sources: [{ ref, name, insecure: false, role: 'primary', original: ref }], skipped: [] };
  if (best.blocked) {
    throw new PivotError('usage', `registry ${best.prefix} is blocked by registries.conf, so ${ref.toString()} cannot be pulled`, {
      field: 'registry.blocked',
      fix: `pull from an allowed registry or remove blocked = true for prefix ${best.prefix}`,
      facts: { prefix: best.prefix, reference: ref.toString() },
    });
  }
  const sources: Source[] = [];
  const skipped: SourcePlan['skipped'] = [];
  const byDigest = ref.digest !== undefined;
  for (const m of best.mirrors) {
    const mref = rewrite(ref, best, m.location);
    const mname = `${mref.registry}/${mref.repository}`;
    if (m.pullFromMirror === 'digest-only' && !byDigest) skipped.push({ name: mname, reason: 'mirror is digest-only and the reference is by tag' });
    else if (m.pullFromMirror === 'tag-only' && byDigest) skipped.push({ name: mname, reason: 'mirror is tag-only and the reference is by digest' });
    else sources.push({ ref: mref, name: mname, insecure: m.insecure, role: 'mirror', original: ref });
  }
  const pref = best.location ? rewrite(ref, best, best.location) : ref;
  sources.push({ ref: pref, name: `${pref.registry}/${pref.repository}`, insecure: best.insecure, role: 'primary', original: ref });
  return { sources, skipped, entry: best };
}

/**
 * Pure: every source for a reference as typed. A short name is tried under each
 * unqualified-search registry in order (a blocked one is skipped); a qualified one has one plan.
 */
export function planReference(text: string, conf: Omit<RegistriesConf, 'files'>): SourcePlan & { reference: ImageReference } {
  const first = parseReference(text, { unqualifiedSearch: conf.unqualifiedSearch });
  const qualified = parseReference(text, { unqualifiedSearch: ['\0'] }).registry !== '\0';
  if (qualified || conf.unqualifiedSearch.length <= 1) return { ...sourcesFor(first, conf), reference: first };
  const plan: SourcePlan = { sources: [], skipped: [] };
  let firstBlock: unknown;
  for (const registry of conf.unqualifiedSearch) {
    const ref = parseReference(text, { unqualifiedSearch: [registry] });
    try {
      const p = sourcesFor(ref, conf);
      plan.sources.push(...p.sources);
      plan.skipped.push(...p.skipped);
    } catch (err) {
      firstBlock ??= err;
      plan.skipped.push({ name: `${ref.registry}/${ref.repository}`, reason: 'blocked by registries.conf' });
    }
  }
  if (plan.sources.length === 0) throw firstBlock;
  return { ...plan, reference: first };
}
