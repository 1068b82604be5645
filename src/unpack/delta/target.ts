// The delta side of an unpack: a LayerTarget that writes only what differs from the booted /usr.
// Everything is written through a DirectTarget on the delta directory; this class decides per
// entry whether to pass it on, and remembers what it left out ("skipped": the overlay will show
// the booted file there) so that later layers, hardlinks and the final whiteouts stay right:
//   - a later layer writing or whiting out a skipped path just drops it from the skipped set;
//   - a hardlink to a skipped file is identical itself, or the target is materialized (copied
//     from the booted file, which is proven equal) and linked, so all names share one inode;
//   - the resolver follows skipped symlinks as the image would (wrapped probe);
//   - finish() hides booted paths the image lacks (whiteouts, or one opaque marker).
// Directories are always written: an overlay directory takes its metadata from the top layer.
import {
  closeSync, constants, fchmodSync, fchownSync, futimesSync, lchownSync, lstatSync, openSync, readdirSync, readlinkSync, symlinkSync, unlinkSync, writeSync, type Stats,
} from 'node:fs';
import { PivotError } from '../../errors.ts';
import { failpoint } from '../../failpoints.ts';
import { xattrs } from '../../xattr.ts';
import { repoObjectOf } from '../bootc.ts';
import { DirectTarget, type DirectTargetOptions, type LayerTarget, type Outcome } from '../entry.ts';
import type { TreeReader } from '../factory-var.ts';
import { cleanComponents, hostPath, joinRel, resolveDirInRoot, type PathProbe } from '../safepath.ts';
import type { TarEntry } from '../tar.ts';
import { compareBody, factsOfEntry, factsOnDisk, identifiedFactsOnDisk, readRange, sameContent } from './booted.ts';
import { SELINUX_XATTR, compareToBooted, objectVerdict, type LabelLookup, type NodeFacts } from './identity.ts';
import { ancestorsOf, planDeltaDir, type ChildView } from './plan.ts';
import { makeWhiteouts, markOpaque } from './overlay-marks.ts';

export interface DeltaTargetOptions extends Omit<DirectTargetOptions, 'wrapProbe'> {
  /** The booted /usr as it was before any pivot (the pivot's private read-only bind). */
  bootedUsr: string;
  /** The booted ostree repo (/sysroot/ostree/repo) for the object shortcut; absent: none. */
  bootedRepo?: string;
  labelFor?: LabelLookup;
  /**
   * Image paths written in full even where the booted /usr has them identical (`usr/etc`: the
   * /etc merge reads the new defaults from the staged tree, so they must all be there).
   */
  writeInFull?: readonly string[];
  /**
   * Image paths (`usr/lib/modules`) never hidden by a whiteout where the image lacks them: the
   * mount phase binds the booted path there (`preserve`), and a whiteout would leave the bind no
   * mount point. The overlay shows the booted path through, as a full staging's empty mount point
   * with the bind on it does.
   */
  neverHide?: readonly string[];
}

export interface DeltaStats {
  /** Non-directory entries left out because the booted /usr has them identical. */
  skipped: number;
  skippedBytes: number;
  /** ostree objects the booted repo already holds: content not written. */
  objectsInBootedRepo: number;
  /** Files whose bytes were compared with the booted file (sizes and metadata agreed). */
  contentCompared: number;
  /** Skipped files copied into the delta because a hardlink to them differs from the booted path. */
  materialized: number;
  whiteouts: number;
  opaqueDirs: number;
}

/** Where the content of a skipped path can be read: null is the booted /usr path itself. */
interface BootedObject { from: string; facts: NodeFacts; mtime: number }

const CREATE_FILE = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;

export class DeltaTarget implements LayerTarget {
  readonly root: string;
  readonly stats: DeltaStats = { skipped: 0, skippedBytes: 0, objectsInBootedRepo: 0, contentCompared: 0, materialized: 0, whiteouts: 0, opaqueDirs: 0 };
  private readonly opts: DeltaTargetOptions;
  private readonly direct: DirectTarget;
  private readonly probe: PathProbe;
  private readonly skipped = new Map<string, BootedObject | null>();
  /** Directories made in the delta (entries and implicit parents); may hold stale names. */
  private readonly deltaDirs = new Set<string>();
  private readonly bootedDirs = new Set<string>();
  private layerRels = new Set<string>();

  constructor(root: string, opts: DeltaTargetOptions) {
    if (!lstatSync(opts.bootedUsr, { throwIfNoEntry: false })?.isDirectory()) {
      throw new PivotError('preflight', `delta staging needs the booted /usr at ${JSON.stringify(opts.bootedUsr)}, which is not a directory`, {
        path: opts.bootedUsr,
        fix: 'stage in full (staging: "full"), or run on the booted node where that bind exists',
      });
    }
    this.root = root;
    this.opts = opts;
    let onDisk: PathProbe | undefined;
    this.direct = new DirectTarget(root, {
      allowDevices: opts.allowDevices,
      isRoot: opts.isRoot,
      wrapProbe: (inner) => {
        onDisk = inner;
        return this.wrappedProbe(inner);
      },
    });
    this.probe = this.wrappedProbe(onDisk!);
  }

  private wrappedProbe(inner: PathProbe): PathProbe {
    return {
      kind: (rel) => {
        const rec = this.skipped.get(rel);
        if (rec === undefined) return inner.kind(rel);
        if (rec !== null) return 'other';
        return lstatSync(this.bootedPath(rel), { throwIfNoEntry: false })?.isSymbolicLink() ? 'symlink' : 'other';
      },
      readlink: (rel) => (this.skipped.get(rel) === null ? readlinkSync(this.bootedPath(rel)) : inner.readlink(rel)),
      mkdir: (rel) => {
        inner.mkdir(rel);
        this.deltaDirs.add(rel);
        // An implicit parent belongs to the layer that needed it, as in DirectTarget.
        this.layerRels.add(rel);
      },
    };
  }

  /** Paths under usr/ of the image, on the booted side. */
  private bootedPath(rel: string): string {
    return rel === 'usr' ? this.opts.bootedUsr : `${this.opts.bootedUsr}/${rel.slice(4)}`;
  }

  /** The overlay shows the booted file at rel only if every booted ancestor is a real directory. */
  private comparable(rel: string): boolean {
    if (!rel.startsWith('usr/')) return false;
    if (this.opts.writeInFull?.some((p) => rel === p || rel.startsWith(`${p}/`))) return false;
    for (let i = rel.indexOf('/', 4); i >= 0; i = rel.indexOf('/', i + 1)) {
      const dir = rel.slice(0, i);
      if (this.bootedDirs.has(dir)) continue;
      if (!lstatSync(this.bootedPath(dir), { throwIfNoEntry: false })?.isDirectory()) return false;
      this.bootedDirs.add(dir);
    }
    return true;
  }

  beginLayer(): void {
    this.direct.beginLayer();
    this.layerRels = new Set();
  }

  async writeEntry(entry: TarEntry, comps: readonly string[], body: AsyncIterable<Buffer>): Promise<Outcome> {
    refuseOverlayMarks(entry);
    const rel = this.direct.placeEntry(entry.name, comps);
    this.layerRels.add(rel);
    if (entry.type === 'dir') {
      this.skipped.delete(rel);
      this.deltaDirs.add(rel);
      return this.direct.writeEntry(entry, comps, body);
    }
    if (entry.type === 'hardlink') return this.hardlink(entry, comps, rel, body);
    let content = body;
    const obj = this.opts.bootedRepo && entry.type === 'file' ? repoObjectOf(comps) : undefined;
    if (obj?.ext === 'file') {
      const from = `${this.opts.bootedRepo}/objects/${obj.csum.slice(0, 2)}/${obj.csum.slice(2)}.file`;
      // Only whether the object is there: its metadata is the entry's, by its name.
      const have = lstatSync(from, { throwIfNoEntry: false });
      if (have?.isFile() && have.size === entry.size) {
        this.stats.objectsInBootedRepo++;
        this.skip(rel, { from, facts: factsOfEntry(entry), mtime: entry.mtime }, 0);
        return 'file';
      }
    } else if ((entry.type === 'file' || entry.type === 'symlink') && this.comparable(rel)) {
      const booted = this.bootedPath(rel);
      const v = compareToBooted(factsOfEntry(entry), factsOnDisk(booted), `/${rel}`, this.opts.labelFor);
      if (v.kind === 'compare-content') {
        this.stats.contentCompared++;
        const c = await compareBody(booted, body);
        if (c.same) {
          this.skip(rel, null, entry.size);
          return 'file';
        }
        content = c.body;
      } else if (v.kind === 'same') {
        this.skip(rel, null, entry.size);
        return entry.type;
      }
    }
    this.unskip(rel);
    return this.direct.writeEntry(entry, comps, content);
  }

  /** Leaves rel out of the delta, removing what an earlier layer (or entry) wrote there. */
  private skip(rel: string, rec: BootedObject | null, bytes: number): void {
    failpoint('delta.skip');
    // Usually nothing is there: an lstat that cannot throw is cheaper than a failing unlink.
    const there = lstatSync(hostPath(this.root, rel), { throwIfNoEntry: false });
    if (there && !there.isDirectory()) unlinkSync(hostPath(this.root, rel));
    if (there?.isDirectory() || this.deltaDirs.has(rel)) {
      this.direct.removePath(rel);
      this.dropUnder(rel);
    }
    this.skipped.set(rel, rec);
    this.stats.skipped++;
    this.stats.skippedBytes += bytes;
  }

  /** rel is about to be written or removed: it is no longer shown from the booted side. */
  private unskip(rel: string): void {
    this.skipped.delete(rel);
    if (this.deltaDirs.has(rel)) this.dropUnder(rel);
  }

  private dropUnder(rel: string, spare?: (k: string) => boolean): void {
    const prefix = rel === '' ? '' : `${rel}/`;
    for (const k of this.skipped.keys()) if (k.startsWith(prefix) && !spare?.(k)) this.skipped.delete(k);
    for (const k of this.deltaDirs) if ((k === rel || k.startsWith(prefix)) && !spare?.(k)) this.deltaDirs.delete(k);
  }

  private async hardlink(entry: TarEntry, comps: readonly string[], rel: string, body: AsyncIterable<Buffer>): Promise<Outcome> {
    const target = this.resolveLinkTarget(entry.linkname);
    const rec = target === undefined ? undefined : this.skipped.get(target);
    // A link to itself changes nothing (DirectTarget does the same), skipped or not.
    if (target === rel && rec !== undefined) return 'hardlink';
    if (target === undefined || target === rel || rec === undefined) {
      // The target is in the delta (or missing: DirectTarget names the problem).
      this.unskip(rel);
      return this.direct.writeEntry(entry, comps, body);
    }
    const from = rec?.from ?? this.bootedPath(target);
    const source = identifiedFactsOnDisk(from);
    if (!source) {
      throw new PivotError('unpack', `the booted file ${JSON.stringify(from)} that ${JSON.stringify(entry.name)} links to vanished during the unpack`, {
        path: from, fix: 'run the pivot again; nothing may change the booted /usr while it runs',
      });
    }
    const facts = rec?.facts ?? source;
    if (this.comparable(rel)) {
      const booted = this.bootedPath(rel);
      const bootedFacts = identifiedFactsOnDisk(booted);
      let v = objectVerdict(facts, source, bootedFacts, `/${rel}`, this.opts.labelFor);
      if (v.kind === 'compare-content') {
        this.stats.contentCompared++;
        v = sameContent(from, booted) ? { kind: 'same' } : { kind: 'differs', why: 'content' };
      }
      if (v.kind === 'same') {
        // No bytes: the unpack counts a link's content once, at its target (expandedBytes).
        this.skip(rel, null, 0);
        return 'hardlink';
      }
    }
    this.materialize(target, from, facts, rec?.mtime);
    this.unskip(rel);
    return this.direct.writeEntry(entry, comps, body);
  }

  private resolveLinkTarget(linkname: string): string | undefined {
    const comps = cleanComponents(linkname, 'hardlink target');
    const last = comps.pop();
    if (last === undefined) return undefined;
    const dir = resolveDirInRoot(comps, this.probe, { create: false, entry: linkname });
    return dir ? joinRel([...dir, last]) : undefined;
  }

  /** Copies a skipped file (or symlink: a hardlink may name one) into the delta at rel. */
  private materialize(rel: string, from: string, facts: NodeFacts, mtime: number | undefined): void {
    failpoint('delta.materialize');
    this.skipped.delete(rel);
    const path = hostPath(this.root, rel);
    this.stats.materialized++;
    if (facts.type === 'symlink') {
      symlinkSync(facts.linkTarget ?? readlinkSync(from), path);
      if (this.opts.isRoot) lchownSync(path, facts.uid, facts.gid);
      return;
    }
    const fd = openSync(path, CREATE_FILE, 0o600);
    try {
      for (const chunk of readRange(from)) {
        let off = 0;
        while (off < chunk.length) off += writeSync(fd, chunk, off);
      }
      if (this.opts.isRoot) fchownSync(fd, facts.uid, facts.gid);
      fchmodSync(fd, facts.mode);
      // The selinux phase labels the delta with the new policy, as it labels a full staging.
      for (const [name, value] of facts.xattrs) if (name !== SELINUX_XATTR) xattrs().setAttributeSync(path, name, value);
      const t = mtime ?? lstatSync(from).mtimeMs / 1000;
      futimesSync(fd, t, t);
    } finally {
      closeSync(fd);
    }
  }

  whiteout(dir: readonly string[], name: string, entryName: string): void {
    this.direct.whiteout(dir, name, entryName);
    const parent = resolveDirInRoot(dir, this.probe, { create: false, entry: entryName });
    if (!parent) return;
    const rel = joinRel([...parent, name]);
    if (!this.layerRels.has(rel)) this.unskip(rel);
  }

  opaque(dir: readonly string[], entryName: string): void {
    this.direct.opaque(dir, entryName);
    const parent = resolveDirInRoot(dir, this.probe, { create: false, entry: entryName }) ?? [];
    const rel = joinRel(parent);
    // Lower layers' entries below go; this layer's stay, exactly as DirectTarget.opaque does:
    // a path survives only if it and every directory between it and rel are this layer's (a
    // directory this layer did not declare goes with all it holds, this layer's files included).
    const start = rel === '' ? 0 : rel.length + 1;
    const spare = (k: string): boolean => {
      if (k === rel) return true;
      if (!this.layerRels.has(k)) return false;
      for (let i = k.indexOf('/', start); i >= 0; i = k.indexOf('/', i + 1)) if (!this.layerRels.has(k.slice(0, i))) return false;
      return true;
    };
    this.dropUnder(rel, spare);
  }

  /** After finish(): the overlay's view of the image (delta, minus whiteouts, plus skipped paths). */
  finishedReader(): TreeReader {
    // Built on the first list(): most runs list nothing (no factory var in the image). One array
    // per directory, appended to: copying it per name was quadratic in a directory's size, and
    // its garbage was the agent's peak memory in the bench (tens of MiB for a big usr/lib).
    let shown: Map<string, string[]> | undefined;
    const shownIn = (dir: string): string[] => {
      if (!shown) {
        shown = new Map();
        for (const [k, rec] of this.skipped) {
          if (rec !== null) continue;
          const i = k.lastIndexOf('/');
          const names = shown.get(k.slice(0, i));
          if (names) names.push(k.slice(i + 1));
          else shown.set(k.slice(0, i), [k.slice(i + 1)]);
        }
      }
      return shown.get(dir) ?? [];
    };
    return {
      kind: (rel) => {
        const st = lstatSync(hostPath(this.root, rel), { throwIfNoEntry: false });
        if (st) return isWhiteout(st) ? 'missing' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
        if (this.skipped.get(rel) !== null) return 'missing';
        return lstatSync(this.bootedPath(rel)).isSymbolicLink() ? 'symlink' : 'other';
      },
      list: (rel) => [
        ...readdirSync(hostPath(this.root, rel), { withFileTypes: true })
          .filter((d) => !(d.isCharacterDevice() && isWhiteout(lstatSync(hostPath(this.root, `${rel}/${d.name}`))))).map((d) => d.name),
        ...shownIn(rel),
      ],
    };
  }

  /** After finish(): removes an empty regular file of the image, hiding the booted one if any. */
  removeEmptyFile(rel: string): boolean {
    const path = hostPath(this.root, rel);
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st) {
      if (!st.isFile() || st.size !== 0) return false;
      unlinkSync(path);
    } else {
      if (this.skipped.get(rel) !== null) return false;
      const booted = lstatSync(this.bootedPath(rel), { throwIfNoEntry: false });
      if (!booted?.isFile() || booted.size !== 0) return false;
      this.skipped.delete(rel);
    }
    if (this.comparable(rel) && lstatSync(this.bootedPath(rel), { throwIfNoEntry: false })) {
      makeWhiteouts([path]);
      this.stats.whiteouts++;
    }
    return true;
  }

  finish(): void {
    const usr = lstatSync(hostPath(this.root, 'usr'), { throwIfNoEntry: false });
    if (usr?.isDirectory() && lstatSync(this.opts.bootedUsr, { throwIfNoEntry: false })?.isDirectory()) {
      // A path never hidden counts as shown from the booted side, as a skipped one does.
      const neverHide = new Set(this.opts.neverHide ?? []);
      const skippedBelow = ancestorsOf([...this.skipped.keys(), ...neverHide].filter((k) => k.startsWith('usr/')));
      const whiteouts: string[] = [];
      const visit = (rel: string): void => {
        const children: ChildView[] = readdirSync(this.bootedPath(rel), { withFileTypes: true }).map((d) => {
          const crel = `${rel}/${d.name}`;
          const st = lstatSync(hostPath(this.root, crel), { throwIfNoEntry: false });
          return {
            name: d.name,
            delta: !st ? 'missing' : st.isDirectory() ? 'dir' : 'other',
            bootedDir: d.isDirectory(),
            skipped: this.skipped.has(crel) || neverHide.has(crel),
          };
        });
        const plan = planDeltaDir(children, skippedBelow.has(rel));
        if (plan.opaque) {
          markOpaque(hostPath(this.root, rel));
          this.stats.opaqueDirs++;
        }
        for (const name of plan.whiteouts) whiteouts.push(hostPath(this.root, `${rel}/${name}`));
        for (const name of plan.descend) visit(`${rel}/${name}`);
      };
      visit('usr');
      failpoint('delta.whiteouts');
      makeWhiteouts(whiteouts);
      this.stats.whiteouts += whiteouts.length;
    }
    this.direct.finish();
  }
}

/**
 * In a full staging these are inert bytes; at the top of an overlay they are instructions
 * (opaque, redirect, metacopy, a whiteout), which would hide or redirect booted files the image
 * never asked to lose. A node image has no business carrying them.
 */
function refuseOverlayMarks(entry: TarEntry): void {
  const mark = [...entry.xattrs.keys()].find((k) => k.startsWith('trusted.overlay.'));
  const whiteoutDevice = entry.type === 'char' && entry.devmajor === 0 && entry.devminor === 0;
  if (mark === undefined && !whiteoutDevice) return;
  throw new PivotError('path-safety', `entry ${JSON.stringify(entry.name)} carries an overlayfs ${mark === undefined ? 'whiteout (a 0/0 character device)' : `xattr ${mark}`}, which delta staging would obey`, {
    path: entry.name,
    fix: 'rebuild the image without overlayfs marks, or set staging to "full"',
  });
}

const isWhiteout = (st: Stats): boolean => st.isCharacterDevice() && st.rdev === 0;
