// A tree digest: the correctness oracle for delta staging. overlay(delta over booted /usr) must
// digest the same as the full staging of the same image. It covers what a program on the node
// can observe of a path: type, permission bits, owner, content, symlink target, device number
// and xattrs (security.selinux included unless left out). Not covered, on purpose: timestamps,
// inode numbers and hardlink grouping (an overlay does not keep links across layers).
// Files are hashed in chunks, so memory stays flat; one line per path is kept for diffs.
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readlinkSync } from 'node:fs';
import { readXattrs } from '../../xattr.ts';
import { readRange, typeOfStats } from './booted.ts';

export interface TreeDigestOptions {
  /** xattr names left out, exactly or by a prefix ending in '.' (e.g. 'trusted.overlay.'). */
  ignoreXattrs?: readonly string[];
}

export interface TreeDigest {
  digest: string;
  /** rel path ('' is the root) -> its facts, one line each. */
  lines: Map<string, string>;
}

function ignored(name: string, rules: readonly string[]): boolean {
  return rules.some((r) => (r.endsWith('.') ? name.startsWith(r) : name === r));
}

export function treeDigest(root: string, opts: TreeDigestOptions = {}): TreeDigest {
  const rules = opts.ignoreXattrs ?? [];
  const lines = new Map<string, string>();
  const walk = (rel: string): void => {
    const path = rel === '' ? root : `${root}/${rel}`;
    const st = lstatSync(path, { bigint: true });
    const type = typeOfStats(st);
    const xs = [...readXattrs(path)].filter(([k]) => !ignored(k, rules)).sort(([a], [b]) => (a < b ? -1 : 1));
    const parts = [type, (Number(st.mode) & 0o7777).toString(8), `${st.uid}:${st.gid}`];
    if (type === 'file') {
      const h = createHash('sha256');
      for (const chunk of readRange(path)) h.update(chunk);
      parts.push(`${st.size}`, h.digest('hex'));
    } else if (type === 'symlink') parts.push(JSON.stringify(readlinkSync(path)));
    else if (type === 'char' || type === 'block') parts.push(st.rdev.toString());
    parts.push(xs.map(([k, v]) => `${k}=${v.toString('hex')}`).join(','));
    lines.set(rel, parts.join(' '));
    if (type === 'dir') for (const name of readdirSync(path).sort()) walk(rel === '' ? name : `${rel}/${name}`);
  };
  walk('');
  const h = createHash('sha256');
  for (const [rel, line] of lines) h.update(`${JSON.stringify(rel)} ${line}\n`);
  return { digest: h.digest('hex'), lines };
}

/** Human-readable differences, empty when the digests agree. */
export function digestDiff(a: TreeDigest, b: TreeDigest, limit = 50): string[] {
  const out: string[] = [];
  for (const [rel, la] of a.lines) {
    const lb = b.lines.get(rel);
    if (lb !== la) out.push(`${JSON.stringify(rel)}: ${la} != ${lb ?? '(missing)'}`);
  }
  for (const rel of b.lines.keys()) if (!a.lines.has(rel)) out.push(`${JSON.stringify(rel)}: (missing) != ${b.lines.get(rel)}`);
  return out.slice(0, limit);
}
