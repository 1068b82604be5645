// The undo journal of an in-place /etc apply. One directory on the same filesystem as current:
//   log        JSON lines: a header, then one record per action, each written BEFORE the action
//              touches current (write-ahead), so a crash at any instant leaves enough to undo it;
//   b/<i>      the entry action i replaced or removed (hard link for files and symlinks, the
//              renamed directory itself for directories);
//   committed  written once every action is done; from then on the journal is only garbage.
// Undo is idempotent: rolling back twice (a crash during recovery) gives the same result.
import {
  closeSync, existsSync, fdatasyncSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, rmSync,
  chmodSync, lchownSync, writeSync, writeFileSync, unlinkSync, linkSync, type Stats,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { PivotError, isErrno } from '../errors.ts';
import { log } from '../log.ts';
import { readBootId } from '../state.ts';

export const JOURNAL_NAME = '.node-image-pivot-etc-journal';
const LOG = 'log';
const COMMITTED = 'committed';

export interface JournalHeader {
  v: 1;
  current: string;
  pid: number;
  /** With bootId, tells a running writer from a dead one whose pid was reused. */
  startTicks?: string | undefined;
  /** The boot the journal was written in: readBootId(), the same id the state file records. */
  bootId?: string;
  startedAt: string;
}

/**
 * One action as recorded before it runs. `was` is false when the path was absent (undo removes
 * whatever is there); otherwise the original lives at b/<i> once the action has started.
 */
export type JournalRecord =
  | { i: number; op: 'create'; path: string; stage: string; was: boolean; wasDir: boolean }
  | { i: number; op: 'remove'; path: string }
  | { i: number; op: 'meta'; path: string; mode: number; uid: number; gid: number; symlink: boolean };

/** Where the journal goes by default: beside current, so that it never shows up inside /etc. */
export function besideJournalDir(current: string): string {
  return join(dirname(resolve(current)), JOURNAL_NAME);
}
/** Fallback when the parent of current is another mount or read-only (composefs roots). */
export function insideJournalDir(current: string): string {
  return join(resolve(current), JOURNAL_NAME);
}
/** Where to look for (or put) the journal of `current`: `explicit` alone if given, else beside, then inside. */
export function journalDirs(current: string, explicit?: string): string[] {
  return explicit ? [explicit] : [besideJournalDir(current), insideJournalDir(current)];
}

export class Journal {
  readonly dir: string;
  readonly current: string;
  private fd: number;
  private readonly durable: boolean;

  private constructor(dir: string, current: string, fd: number, durable: boolean) {
    this.dir = dir;
    this.current = current;
    this.fd = fd;
    this.durable = durable;
  }

  /** Creates a fresh journal; refuses when one is already there (recover first). */
  static create(dir: string, current: string, durable: boolean): Journal {
    mkdirSync(dir, { mode: 0o700 });
    mkdirSync(join(dir, 'b'), { mode: 0o700 });
    const fd = openSync(join(dir, LOG), 'wx', 0o600);
    const j = new Journal(dir, current, fd, durable);
    const header: JournalHeader = { v: 1, current: resolve(current), ...processIdentity(), startedAt: new Date().toISOString() };
    j.append(header);
    // The header reaches the disk either way; a durable append has just synced this same fd.
    if (!durable) fdatasyncSync(fd);
    return j;
  }

  backupPath(i: number): string {
    return join(this.dir, 'b', String(i));
  }

  append(record: JournalRecord | JournalHeader): void {
    const buf = Buffer.from(`${JSON.stringify(record)}\n`);
    let off = 0;
    while (off < buf.length) off += writeSync(this.fd, buf, off);
    if (this.durable) fdatasyncSync(this.fd);
  }

  /** Marks the apply done. After this, recovery deletes the journal instead of undoing. */
  commit(): void {
    fdatasyncSync(this.fd);
    const tmp = join(this.dir, `${COMMITTED}.tmp`);
    writeFileSync(tmp, `${new Date().toISOString()}\n`);
    renameSync(tmp, join(this.dir, COMMITTED));
    this.close();
    rmSync(this.dir, { recursive: true, force: true });
  }

  close(): void {
    if (this.fd >= 0) closeSync(this.fd);
    this.fd = -1;
  }

  /** Undoes every recorded action, newest first, then deletes the journal. */
  rollback(): void {
    this.close();
    rollbackDir(this.dir, this.current);
  }
}

function readLog(dir: string): { header: JournalHeader | undefined; records: JournalRecord[] } {
  let text: string;
  try {
    text = readFileSync(join(dir, LOG), 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return { header: undefined, records: [] };
    throw err;
  }
  const lines = text.split('\n');
  let header: JournalHeader | undefined;
  const records: JournalRecord[] = [];
  for (const [k, line] of lines.entries()) {
    if (line === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (err) {
      // Only the last line can be torn by a crash, and its action had not started.
      if (k >= lines.length - 2) break;
      throw new PivotError('etc-merge', `journal line ${k + 1} is corrupt`, {
        path: join(dir, LOG),
        fix: 'restore /etc by hand from the b/ directory of the journal, then delete the journal',
        cause: err,
      });
    }
    if (k === 0) header = value as JournalHeader;
    else records.push(value as JournalRecord);
  }
  return { header, records };
}

/** lstat, or undefined when nothing is there (ENOENT, or ENOTDIR: a parent is not a directory). */
export function lstatOrUndefined(path: string): Stats | undefined {
  try {
    return lstatSync(path);
  } catch (err) {
    if (isErrno(err, 'ENOENT', 'ENOTDIR')) return undefined;
    throw err;
  }
}

function undo(rec: JournalRecord, current: string, backup: string): void {
  const target = join(current, rec.path);
  switch (rec.op) {
    case 'create': {
      if (lstatOrUndefined(rec.stage)) rmSync(rec.stage, { recursive: true, force: true });
      if (!rec.was) {
        if (lstatOrUndefined(target)) rmSync(target, { recursive: true, force: true });
        return;
      }
      if (!lstatOrUndefined(backup)) return; // never started, or already undone
      const t = lstatOrUndefined(target);
      if (t?.isDirectory()) {
        rmSync(target, { recursive: true, force: true });
      } else if (t && rec.wasDir) {
        unlinkSync(target);
      }
      // rename over a file or symlink is atomic: readers see the old or the new, never nothing.
      renameSync(backup, target);
      return;
    }
    case 'remove':
      if (!lstatOrUndefined(backup)) return;
      if (lstatOrUndefined(target)) rmSync(target, { recursive: true, force: true });
      renameSync(backup, target);
      return;
    case 'meta':
      if (!lstatOrUndefined(target)) return;
      lchownSync(target, rec.uid, rec.gid);
      if (!rec.symlink) chmodSync(target, rec.mode);
  }
}

/** Rolls back (or, when committed, just deletes) the journal at `dir` for `current`. */
export function rollbackDir(dir: string, current: string): 'none' | 'rolled-back' {
  if (existsSync(join(dir, COMMITTED))) {
    rmSync(dir, { recursive: true, force: true });
    return 'none';
  }
  const { header, records } = readLog(dir);
  if (header && resolve(header.current) !== resolve(current)) {
    throw new PivotError('etc-merge', `the journal belongs to ${JSON.stringify(header.current)}, not this directory`, {
      path: dir,
      fix: `run etc-merge with --current ${header.current} to roll it back first`,
    });
  }
  if (header && writerAlive(header)) {
    throw new PivotError('etc-merge', `another /etc merge (pid ${header.pid}) is applying right now`, {
      path: dir,
      fix: `wait for pid ${header.pid} to finish; never run two merges on the same /etc`,
    });
  }
  for (const rec of [...records].reverse()) {
    undo(rec, current, join(dir, 'b', String(rec.i)));
  }
  rmSync(dir, { recursive: true, force: true });
  if (records.length === 0) return 'none';
  log().warn({ journal: dir, actions: records.length }, 'etc merge: rolled back an unfinished apply');
  return 'rolled-back';
}

/**
 * Linux hard links and renames need the same mount; probe it once instead of failing mid-apply.
 * The probe links an existing file of current INTO the journal, so that a crash here leaves
 * nothing behind in /etc. Without a regular file to link, the first action is the probe (an
 * EXDEV there rolls back like any other error).
 */
export function sameMount(dir: string, current: string, someFile: string | undefined): boolean {
  if (someFile === undefined) return true;
  const probe = join(dir, 'probe');
  try {
    linkSync(join(current, someFile), probe);
    unlinkSync(probe);
    return true;
  } catch (err) {
    if (isErrno(err, 'EXDEV', 'EPERM', 'EROFS')) return false;
    if (isErrno(err, 'ENOENT')) return true;
    throw err;
  }
}

/** Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat). */
export function startTicks(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

export function processIdentity(): { bootId: string; pid: number; startTicks: string | undefined } {
  return { bootId: readBootId(), pid: process.pid, startTicks: startTicks(process.pid) };
}

/** True when the process that wrote the journal is still running (same boot, same process). */
export function writerAlive(header: JournalHeader): boolean {
  if (header.pid === process.pid || header.bootId === undefined || header.bootId !== readBootId()) return false;
  const ticks = startTicks(header.pid);
  return ticks !== undefined && ticks === header.startTicks;
}
