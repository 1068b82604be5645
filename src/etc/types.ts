// Shapes shared by the /etc merge: scanned trees, plan actions, warnings. Kept free of I/O so the
// plan and its tests can build these in memory.

export type EtcEntryType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'char-device' | 'block-device';
export type SpecialType = Exclude<EtcEntryType, 'file' | 'dir' | 'symlink'>;

/** One lstat'ed path. Fields beyond type/mode/uid/gid/size/target only guard against staleness. */
export interface EtcEntry {
  type: EtcEntryType;
  /** Permission bits including setuid/setgid/sticky (st_mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes for regular files, 0 otherwise. */
  size: number;
  /** Symlink target, as stored; never followed. */
  target?: string;
  /** Hex sha256 of a regular file's content, filled only when a comparison needs it. */
  sha256?: string;
  ino: number;
  mtimeMs: number;
}

/** A scanned tree: relative paths ('a/b', no leading slash; '' is the root itself) to entries. */
export interface EtcTree {
  root: string;
  entries: Map<string, EtcEntry>;
}

export interface EtcTrees {
  base: EtcTree;
  current: EtcTree;
  new: EtcTree;
}

export type TreeName = keyof EtcTrees;

interface ActionBase {
  /** Relative to the current root. */
  path: string;
}
/** A regular file from new where current has nothing. */
export interface AddAction extends ActionBase { action: 'add'; entry: EtcEntry }
/** A regular file from new over whatever current has (file, symlink or a whole untouched directory). */
export interface ReplaceAction extends ActionBase { action: 'replace'; entry: EtcEntry; was: EtcEntry }
/** A symlink from new, over nothing or over an untouched entry. */
export interface SymlinkAction extends ActionBase { action: 'symlink'; entry: EtcEntry; was?: EtcEntry }
/** A directory from new (empty; its content follows as separate actions). */
export interface MkdirAction extends ActionBase { action: 'mkdir'; entry: EtcEntry; was?: EtcEntry }
/** An untouched entry that new no longer has; a directory goes with everything below it. */
export interface RemoveAction extends ActionBase { action: 'remove'; was: EtcEntry; below: number }
export interface ChmodAction extends ActionBase { action: 'chmod'; was: EtcEntry; mode: number }
export interface ChownAction extends ActionBase { action: 'chown'; was: EtcEntry; uid: number; gid: number }

export type EtcAction = AddAction | ReplaceAction | SymlinkAction | MkdirAction | RemoveAction | ChmodAction | ChownAction;
export type ActionName = EtcAction['action'];
export const ACTION_NAMES: readonly ActionName[] = ['add', 'replace', 'symlink', 'mkdir', 'remove', 'chmod', 'chown'];

export type WarningCode =
  /** Changed locally and upstream differently: the local version is kept. */
  | 'both-changed'
  /** Changed locally, removed upstream: the local version is kept. */
  | 'kept-local-removed-upstream'
  /** Deleted locally, changed upstream: stays deleted. */
  | 'deleted-locally-changed-upstream'
  /** Upstream removed or replaced a directory that holds local changes: the directory stays. */
  | 'kept-dir-with-local-content';

export interface EtcWarning {
  code: WarningCode;
  path: string;
  message: string;
}

export interface IgnoredEntry {
  path: string;
  tree: TreeName;
  type: EtcEntryType;
  /** What happened to it. */
  note: string;
}

export interface EtcConflict {
  path: string;
  message: string;
}

export interface EtcPlan {
  roots: { base: string; current: string; new: string };
  actions: EtcAction[];
  warnings: EtcWarning[];
  ignored: IgnoredEntry[];
  conflicts: EtcConflict[];
  /** Entries per tree, for the summary. */
  scanned: { base: number; current: number; new: number };
  /**
   * The scanned current tree. Apply re-checks entries against it so that a change made between
   * planning and applying aborts instead of being overwritten.
   */
  current: ReadonlyMap<string, EtcEntry>;
}
