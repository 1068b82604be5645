// Labels after the fact. While the layers stream, the new policy is not known yet (its
// file_contexts is inside the image), so the delta leaves out files identical in everything but
// the label. Once the image is complete, this asks the new policy for the label of every path the
// overlay shows from the booted /usr, and copies into the delta each one whose booted label
// differs; the selinux phase then labels the delta as it labels a full staging. It reads only the
// delta and the booted /usr, so a rerun after a crash finds the same paths again.
import {
  closeSync, constants, fchmodSync, fchownSync, futimesSync, lchownSync, lstatSync, lutimesSync, mkdirSync, openSync, readdirSync, readlinkSync, renameSync,
  rmSync, symlinkSync, writeSync,
} from 'node:fs';
import { dirname, join } from 'node:path';
import { failpoint } from '../../failpoints.ts';
import { readXattrs, xattrs } from '../../xattr.ts';
import { readRange } from './booted.ts';
import { SELINUX_XATTR, labelOf } from './identity.ts';
import { OPAQUE_XATTR } from './overlay-marks.ts';

export type LabelKind = 'file' | 'dir' | 'lnk';
/** The new policy's labels for absolute paths (e.g. src/selinux.ts lookupContexts on its file_contexts). */
export type BatchLabelLookup = (items: ReadonlyArray<{ path: string; kind: LabelKind }>) => Promise<ReadonlyMap<string, string>>;

export interface ShownPath {
  /** Relative to /usr, e.g. bin/ls. */
  rel: string;
  kind: 'file' | 'lnk';
}

/**
 * The non-directories overlay(delta over booted) shows from the booted side: booted children of
 * directories both have (not opaque in the delta) that the delta has nothing at. Devices, FIFOs
 * and sockets are not relabelled here.
 */
export function shownFromBooted(deltaUsr: string, bootedUsr: string): ShownPath[] {
  const out: ShownPath[] = [];
  const visit = (rel: string): void => {
    const deltaDir = rel === '' ? deltaUsr : `${deltaUsr}/${rel}`;
    if (xattrs().getAttributeSync(deltaDir, OPAQUE_XATTR)) return;
    for (const d of readdirSync(rel === '' ? bootedUsr : `${bootedUsr}/${rel}`, { withFileTypes: true })) {
      const crel = rel === '' ? d.name : `${rel}/${d.name}`;
      const st = lstatSync(`${deltaUsr}/${crel}`, { throwIfNoEntry: false });
      if (st) {
        if (st.isDirectory() && d.isDirectory()) visit(crel);
      } else if (d.isFile()) out.push({ rel: crel, kind: 'file' });
      else if (d.isSymbolicLink()) out.push({ rel: crel, kind: 'lnk' });
    }
  };
  visit('');
  return out;
}

/** Copies a booted file or symlink into the delta with its metadata (not its label). */
function copyIntoDelta(from: string, to: string): void {
  const st = lstatSync(from);
  if (st.isSymbolicLink()) {
    symlinkSync(readlinkSync(from), to);
    lchownSync(to, st.uid, st.gid);
    lutimesSync(to, st.atime, st.mtime);
    return;
  }
  const fd = openSync(to, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    for (const chunk of readRange(from)) {
      let off = 0;
      while (off < chunk.length) off += writeSync(fd, chunk, off);
    }
    fchownSync(fd, st.uid, st.gid);
    fchmodSync(fd, st.mode & 0o7777);
    for (const [name, value] of readXattrs(from)) if (name !== SELINUX_XATTR) xattrs().setAttributeSync(to, name, value);
    futimesSync(fd, st.atime, st.mtime);
  } finally {
    closeSync(fd);
  }
}

/**
 * Copies into the delta every shown path whose booted label is not the new policy's. Each copy
 * is made beside the delta's usr/ (never mounted) and renamed into place, so a crash leaves
 * either nothing or the whole file at the path, and the next run sees the rest as still shown.
 */
export async function stageRelabelled(deltaUsr: string, bootedUsr: string, lookup: BatchLabelLookup): Promise<{ checked: number; staged: string[] }> {
  const scratch = join(dirname(deltaUsr), '.relabel-tmp');
  rmSync(scratch, { recursive: true, force: true });
  mkdirSync(scratch, { mode: 0o700 });
  const shown = shownFromBooted(deltaUsr, bootedUsr);
  const wanted = await lookup(shown.map((s) => ({ path: `/usr/${s.rel}`, kind: s.kind })));
  const staged: string[] = [];
  for (const s of shown) {
    const from = `${bootedUsr}/${s.rel}`;
    if (wanted.get(`/usr/${s.rel}`) === labelOf(readXattrs(from))) continue;
    failpoint('delta.relabel');
    const tmp = join(scratch, String(staged.length));
    copyIntoDelta(from, tmp);
    renameSync(tmp, `${deltaUsr}/${s.rel}`);
    staged.push(s.rel);
  }
  rmSync(scratch, { recursive: true, force: true });
  return { checked: shown.length, staged };
}
