// The 3-way /etc merge as a pure function: three scanned trees in, ordered actions out.
//
// The end state is ostree's: the new defaults with the local diff (base -> current) replayed on
// top. The plan expresses it as edits to current, because current is changed in place:
//   - a path changed locally (content, type, mode, owner, symlink target; added; deleted) keeps
//     its current state;
//   - a path untouched locally follows new (added, changed, removed);
//   - a directory is "changed" only by its own metadata; its children are merged one by one, so a
//     re-moded directory keeps its mode and still receives new upstream files. When new has no
//     directory there, the changed directory is kept whole, like ostree's copy_dir_recurse.
// Content is compared by size, then sha256. A hash that a comparison needs but the tree does not
// carry yet is reported in `missing`; the caller hashes those files and plans again (plan.ts never
// reads a disk).
import type { EtcAction, EtcConflict, EtcEntry, EtcTree, EtcTrees, EtcWarning, IgnoredEntry, TreeName } from './types.ts';

export interface PurePlan {
  actions: EtcAction[];
  warnings: EtcWarning[];
  ignored: IgnoredEntry[];
  conflicts: EtcConflict[];
}

export type PlanOutcome =
  | { complete: true; plan: PurePlan }
  | { complete: false; missing: Array<{ tree: TreeName; path: string }> };

type Local = 'none' | 'added' | 'deleted' | 'same' | 'modified';

const isSpecial = (e: EtcEntry | undefined): boolean =>
  e !== undefined && e.type !== 'file' && e.type !== 'dir' && e.type !== 'symlink';

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
}

function childIndex(trees: EtcTrees): Map<string, Set<string>> {
  const index = new Map<string, Set<string>>();
  for (const tree of [trees.base, trees.current, trees.new]) {
    for (const rel of tree.entries.keys()) {
      if (rel === '') continue;
      const parent = parentOf(rel);
      let set = index.get(parent);
      if (!set) index.set(parent, (set = new Set()));
      set.add(rel);
    }
  }
  return index;
}

export function sameMeta(a: EtcEntry, b: EtcEntry): boolean {
  // Linux has no symlink modes; lchmod does not exist, so a symlink's mode is never a difference.
  if (a.uid !== b.uid || a.gid !== b.gid) return false;
  return a.type === 'symlink' || a.mode === b.mode;
}

export function planMerge(trees: EtcTrees): PlanOutcome {
  const { base, current, new: next } = trees;
  const children = childIndex(trees);
  const actions: EtcAction[] = [];
  const warnings: EtcWarning[] = [];
  const ignored: IgnoredEntry[] = [];
  const conflicts: EtcConflict[] = [];
  const missing: Array<{ tree: TreeName; path: string }> = [];
  const missingKeys = new Set<string>();

  const need = (tree: TreeName, path: string): void => {
    const key = `${tree}\0${path}`;
    if (missingKeys.has(key)) return;
    missingKeys.add(key);
    missing.push({ tree, path });
  };

  /** Same type and same content (file bytes or symlink target). Directories have no content. */
  const sameContent = (ta: TreeName, a: EtcEntry, tb: TreeName, b: EtcEntry, path: string): boolean => {
    if (a.type !== b.type) return false;
    if (a.type === 'symlink') return a.target === b.target;
    if (a.type !== 'file') return true;
    if (a.size !== b.size) return false;
    if (a.sha256 === undefined || b.sha256 === undefined) {
      if (a.sha256 === undefined) need(ta, path);
      if (b.sha256 === undefined) need(tb, path);
      return true; // provisional; the plan is discarded while anything is missing
    }
    return a.sha256 === b.sha256;
  };
  const same = (ta: TreeName, a: EtcEntry, tb: TreeName, b: EtcEntry, path: string): boolean =>
    sameContent(ta, a, tb, b, path) && sameMeta(a, b);

  const get = (tree: EtcTree, name: TreeName, rel: string): EtcEntry | undefined => {
    const e = tree.entries.get(rel);
    if (e && isSpecial(e)) {
      // FIFOs, sockets and devices take no part in the merge (ostree ignores them too).
      if (name !== 'current') {
        ignored.push({ path: rel, tree: name, type: e.type, note: `not created: ${e.type} in ${name} is ignored` });
      }
      return undefined;
    }
    return e;
  };

  const classify = (b: EtcEntry | undefined, c: EtcEntry | undefined, rel: string): Local => {
    if (!b) return c ? 'added' : 'none';
    if (!c) return 'deleted';
    return same('base', b, 'current', c, rel) ? 'same' : 'modified';
  };

  // Paths whose current state must survive: local additions and modifications, and specials left
  // in place. Their ancestors cannot be removed or replaced by a non-directory.
  const keepBelow = new Set<string>();
  for (const [rel, c] of current.entries) {
    if (rel === '') continue;
    const b = base.entries.get(rel);
    const keep = isSpecial(c) || (!isSpecial(b) ? classify(b, c, rel) : 'added') !== 'same';
    if (!keep) continue;
    for (let p = parentOf(rel); p !== '' && !keepBelow.has(p); p = parentOf(p)) keepBelow.add(p);
  }

  const warn = (code: EtcWarning['code'], path: string, message: string): void => {
    warnings.push({ code, path, message });
  };

  const create = (rel: string, n: EtcEntry, was?: EtcEntry): void => {
    if (n.type === 'dir') actions.push(was ? { action: 'mkdir', path: rel, entry: n, was } : { action: 'mkdir', path: rel, entry: n });
    else if (n.type === 'symlink') actions.push(was ? { action: 'symlink', path: rel, entry: n, was } : { action: 'symlink', path: rel, entry: n });
    else if (was) actions.push({ action: 'replace', path: rel, entry: n, was });
    else actions.push({ action: 'add', path: rel, entry: n });
  };

  const countBelow = (rel: string): number => {
    let n = 0;
    const prefix = `${rel}/`;
    for (const key of current.entries.keys()) if (key.startsWith(prefix)) n++;
    return n;
  };

  const walk = (dirRel: string): void => {
    const names = children.get(dirRel);
    if (!names) return;
    for (const rel of [...names].sort()) visit(rel);
  };

  const visit = (rel: string): void => {
    const b = get(base, 'base', rel);
    const n = get(next, 'new', rel);
    const cRaw = current.entries.get(rel);
    if (cRaw && isSpecial(cRaw)) {
      ignored.push({ path: rel, tree: 'current', type: cRaw.type, note: `left in place: ${cRaw.type} in current is ignored` });
      if (n?.type === 'dir') {
        warn('kept-dir-with-local-content', rel, `new has a directory here but current has a ${cRaw.type}; the directory and its content are not installed`);
      }
      return;
    }
    const c = cRaw;
    const local = classify(b, c, rel);
    switch (local) {
      case 'none':
        if (n) {
          create(rel, n);
          if (n.type === 'dir') walk(rel);
        }
        return;
      case 'deleted':
        if (n && !same('base', b as EtcEntry, 'new', n, rel)) {
          warn('deleted-locally-changed-upstream', rel, 'deleted locally and changed upstream: stays deleted');
        }
        return;
      case 'added':
      case 'modified':
        keepLocal(rel, local, b, c as EtcEntry, n);
        return;
      case 'same':
        followNew(rel, c as EtcEntry, n);
    }
  };

  const keepLocal = (rel: string, local: 'added' | 'modified', b: EtcEntry | undefined, c: EtcEntry, n: EtcEntry | undefined): void => {
    if (c.type !== 'dir' && n?.type === 'dir') {
      conflicts.push({
        path: rel,
        message: `new defaults to a directory where the local ${c.type} was ${local === 'added' ? 'added' : 'modified'}`,
      });
      return;
    }
    if (!n) {
      if (local === 'modified') {
        warn('kept-local-removed-upstream', rel, c.type === 'dir'
          ? 'changed locally and removed upstream: the directory is kept whole, with everything below it'
          : 'changed locally and removed upstream: the local version is kept');
      }
    } else if (c.type === 'dir' && n.type !== 'dir') {
      warn('kept-dir-with-local-content', rel, `changed locally; upstream replaced the directory with a ${n.type}, which is not installed; the directory is kept whole`);
    } else {
      const upstreamChanged = local === 'added' || !same('base', b as EtcEntry, 'new', n, rel);
      if (upstreamChanged && !same('current', c, 'new', n, rel)) {
        warn('both-changed', rel, `changed ${local === 'added' ? '(added) ' : ''}locally and upstream: the local version is kept`);
      }
    }
    // A changed or added directory that new does not have as a directory is kept whole, as
    // ostree's copy_dir_recurse keeps it: everything below stays, changed locally or not.
    if (c.type === 'dir' && n?.type === 'dir') walk(rel);
  };

  const followNew = (rel: string, c: EtcEntry, n: EtcEntry | undefined): void => {
    if (c.type === 'dir' && (!n || n.type !== 'dir') && keepBelow.has(rel)) {
      warn('kept-dir-with-local-content', rel, n
        ? `upstream replaced the directory with a ${n.type}; the directory holds local changes and stays`
        : 'removed upstream; the directory holds local changes and stays');
      walk(rel);
      return;
    }
    if (!n) {
      actions.push({ action: 'remove', path: rel, was: c, below: c.type === 'dir' ? countBelow(rel) : 0 });
      return;
    }
    if (c.type === 'dir' && n.type === 'dir') {
      metadata(rel, c, n);
      walk(rel);
      return;
    }
    if (c.type === 'dir' || n.type === 'dir' || !sameContent('current', c, 'new', n, rel)) {
      create(rel, n, c);
      if (n.type === 'dir') walk(rel);
      return;
    }
    metadata(rel, c, n);
  };

  const metadata = (rel: string, c: EtcEntry, n: EtcEntry): void => {
    // chown first: it clears setuid/setgid, which the chmod then sets.
    if (c.uid !== n.uid || c.gid !== n.gid) actions.push({ action: 'chown', path: rel, was: c, uid: n.uid, gid: n.gid });
    if (c.type !== 'symlink' && c.mode !== n.mode) actions.push({ action: 'chmod', path: rel, was: c, mode: n.mode });
  };

  walk('');
  if (missing.length > 0) return { complete: false, missing };
  return { complete: true, plan: { actions, warnings, ignored, conflicts } };
}
