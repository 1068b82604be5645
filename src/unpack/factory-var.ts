// bootc puts a derived layer's var/ at usr/share/factory/var: /var belongs to the node, and an
// image only seeds it (bootc copies it at the first deployment; rpm-ostree turns it into
// tmpfiles.d lines). A pivot never writes the live /var itself, so it declares every seeded entry
// for systemd-tmpfiles, which the refresh phase runs with --create: `C` copies an entry only
// when the destination is missing (or an empty directory), so what the node already has is
// never overwritten, and what it lacks appears the way a first deployment would create it.
import { closeSync, constants, lstatSync, mkdirSync, openSync, readdirSync, rmSync, writeSync } from 'node:fs';
import { hostPath } from './safepath.ts';

export const FACTORY_VAR = 'usr/share/factory/var';
export const FACTORY_VAR_TMPFILES = 'usr/lib/tmpfiles.d/node-image-pivot-factory-var.conf';

/** A tmpfiles.d path field: quoted, with specifiers and C escapes neutralised. */
export function tmpfilesPath(path: string): string {
  let out = '';
  for (const ch of path) {
    const code = ch.codePointAt(0)!;
    if (ch === '\\' || ch === '"') out += `\\${ch}`;
    else if (ch === '%') out += '%%';
    else if (code < 0x20 || code === 0x7f) out += `\\x${code.toString(16).padStart(2, '0')}`;
    else out += ch;
  }
  return `"${out}"`;
}

/** No whitespace, quote, backslash or control character: safe as an unquoted tmpfiles argument. */
function plainName(name: string): boolean {
  for (const ch of name) {
    const code = ch.codePointAt(0)!;
    if (code <= 0x20 || code === 0x7f || ch === '"' || ch === '\\' || /\s/.test(ch)) return false;
  }
  return true;
}

/**
 * One `C` line per entry under the factory var tree, parents before children. The source
 * argument of a tmpfiles line cannot be quoted, so an entry whose name has whitespace, quotes,
 * backslashes or control characters gets no line of its own: its parent's line copies it along
 * when the parent is missing.
 */
export function factoryVarLines(root: string, reader: TreeReader = diskReader(root)): string[] {
  const lines: string[] = [];
  const walk = (rel: string): void => {
    for (const name of reader.list(`${FACTORY_VAR}/${rel}`).sort()) {
      if (!plainName(name)) continue;
      const child = rel === '' ? name : `${rel}/${name}`;
      lines.push(`C ${tmpfilesPath(`/var/${child}`)} - - - - /${FACTORY_VAR}/${child.replace(/%/g, '%%')}`);
      if (reader.kind(`${FACTORY_VAR}/${child}`) === 'dir') walk(child);
    }
  };
  walk('');
  return lines;
}

/**
 * The finished tree as the node will see it. On disk that is the destination itself; a delta
 * staging answers for the overlay of the delta over the booted /usr (src/unpack/delta/target.ts).
 */
export interface TreeReader {
  kind(rel: string): 'dir' | 'symlink' | 'other' | 'missing';
  list(rel: string): string[];
}

export function diskReader(root: string): TreeReader {
  return {
    kind(rel) {
      const st = lstatSync(hostPath(root, rel), { throwIfNoEntry: false });
      return !st ? 'missing' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
    },
    list: (rel) => readdirSync(hostPath(root, rel)),
  };
}

/**
 * True when every component of rel is a real directory (created when `create`). The tree came
 * from layers: a symlink on the way could point anywhere, so it is never followed here.
 */
function realDirs(root: string, rel: string, create: boolean, reader: TreeReader = diskReader(root)): boolean {
  let at = '';
  for (const part of rel.split('/')) {
    at = at === '' ? part : `${at}/${part}`;
    const kind = reader.kind(at);
    if (kind === 'missing' && create) mkdirSync(hostPath(root, at), { mode: 0o755 });
    else if (kind !== 'dir') return false;
  }
  return true;
}

/**
 * Writes the tmpfiles.d file when the tree seeds /var; returns the number of entries declared,
 * or undefined when a symlink in the image's usr/ stands where a directory must be.
 */
export function declareFactoryVar(root: string, reader: TreeReader = diskReader(root)): number | undefined {
  if (reader.kind(FACTORY_VAR) === 'missing') return 0;
  if (!realDirs(root, FACTORY_VAR, false, reader)) return undefined;
  const lines = factoryVarLines(root, reader);
  if (lines.length === 0) return 0;
  const dir = FACTORY_VAR_TMPFILES.slice(0, FACTORY_VAR_TMPFILES.lastIndexOf('/'));
  if (!realDirs(root, dir, true)) return undefined;
  const file = hostPath(root, FACTORY_VAR_TMPFILES);
  rmSync(file, { force: true, recursive: true });
  const fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o644);
  try {
    writeSync(fd, `# Written by node-image-pivot: seeds /var from the image's derived layers (docs/unpack.md).\n${lines.join('\n')}\n`);
  } finally {
    closeSync(fd);
  }
  return lines.length;
}
