// PURE: what the delta needs in one of its directories once every layer is applied, so that
// overlay(delta over booted /usr) shows exactly the node image there. Only directories the delta
// has and the booted /usr also has as a directory are merged by overlayfs; for those, each booted
// child the node image lacks must be hidden. One opaque marker does that for the whole directory
// when nothing below it relies on a booted file (the node image replaced it wholesale);
// otherwise each such child gets its own whiteout and merged subdirectories are visited in turn.

export interface ChildView {
  name: string;
  /** What the delta has at this name. */
  delta: 'dir' | 'other' | 'missing';
  bootedDir: boolean;
  /** The node image has this path and the delta left it out as identical to the booted one. */
  skipped: boolean;
}

export interface DirPlan {
  opaque: boolean;
  whiteouts: string[];
  /** Subdirectories that overlayfs merges with their booted counterpart. */
  descend: string[];
}

/** `children` are the booted directory's entries; `skippedBelow`: a skipped path lies under it. */
export function planDeltaDir(children: readonly ChildView[], skippedBelow: boolean): DirPlan {
  const hidden = children.filter((c) => c.delta === 'missing' && !c.skipped).map((c) => c.name);
  if (hidden.length > 0 && !skippedBelow) return { opaque: true, whiteouts: [], descend: [] };
  return {
    opaque: false,
    whiteouts: hidden,
    descend: children.filter((c) => c.delta === 'dir' && c.bootedDir).map((c) => c.name),
  };
}

/** Every proper ancestor of each path ('a/b/c' gives 'a' and 'a/b'). */
export function ancestorsOf(paths: Iterable<string>): Set<string> {
  const out = new Set<string>();
  for (const p of paths) {
    for (let i = p.indexOf('/'); i >= 0; i = p.indexOf('/', i + 1)) out.add(p.slice(0, i));
  }
  return out;
}
