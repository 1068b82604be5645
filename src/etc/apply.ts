// Applies an /etc plan in place on the live directory, transactionally.
//
// Every action is journaled before it touches current (journal.ts). A new file, symlink or
// directory is staged beside its target and renamed over it, so readers see the old or the new
// entry, never a half-written one. Whatever is replaced or removed is kept in the journal until
// the commit. Any error rolls everything back; a crash leaves the journal for recoverEtcJournal.
import {
  chmodSync, copyFileSync, constants, lchownSync, linkSync, lstatSync, mkdirSync, renameSync,
  symlinkSync, unlinkSync,
} from 'node:fs';
import { randomBytes } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { PivotError, asPivotError, isErrno } from '../errors.ts';
import { failpoint } from '../failpoints.ts';
import { log } from '../log.ts';
import { readXattrs, xattrs } from '../xattr.ts';
import { Journal, journalDirs, lstatOrUndefined, sameMount } from './journal.ts';
import { conflictError } from './conflict.ts';
import { entryFromStats, walk } from './scan.ts';
import { ACTION_NAMES, type ActionName, type EtcAction, type EtcEntry, type EtcPlan } from './types.ts';

export interface EtcApplyOptions {
  /** Where to keep the journal; it must be on the same mount as current. */
  journalDir?: string;
  /** fdatasync the journal after every record, so it survives a power cut too (default true). */
  durable?: boolean;
  /**
   * SELinux contexts for the entries the merge writes, by path relative to current. Such an entry
   * gets this label instead of new's security.selinux: new's copy was labelled for its place in
   * the image (/usr/etc), not for /etc. See src/selinux.ts etcLabels.
   */
  labels?: ReadonlyMap<string, string>;
}

const SELINUX_XATTR = 'security.selinux';

export interface EtcApplyResult {
  applied: number;
  counts: Record<ActionName, number>;
  /** Where the journal lived while applying (already deleted on success). */
  journalDir: string | null;
  seconds: number;
}

/** Picks and creates the journal directory. The default sits beside current; see journal.ts. */
function openJournal(current: string, explicit: string | undefined, durable: boolean, someFile: string | undefined): Journal {
  const candidates = journalDirs(current, explicit);
  const leftover = candidates.find((dir) => lstatOrUndefined(dir));
  if (leftover !== undefined) {
    throw new PivotError('etc-merge', 'an unfinished /etc merge journal exists', {
      path: leftover,
      fix: 'rerun etc-merge (it rolls the journal back first) or call recoverEtcJournal before applying',
    });
  }
  let lastErr: unknown;
  for (const dir of candidates) {
    let journal: Journal;
    try {
      journal = Journal.create(dir, current, durable);
    } catch (err) {
      if (!explicit && isErrno(err, 'EROFS', 'EACCES', 'EPERM')) {
        lastErr = err;
        continue;
      }
      throw asPivotError(err, 'make the journal directory writable or pass another one on the same filesystem');
    }
    if (sameMount(dir, current, someFile)) return journal;
    journal.rollback();
    lastErr = new Error(`${dir} is not on the same mount as ${current}`);
    if (explicit) break;
  }
  throw new PivotError('etc-merge', `no journal directory on the same mount as current: ${(lastErr as Error).message}`, {
    path: current,
    fix: 'pass a journal directory on the same filesystem and mount as the live /etc',
    cause: lastErr,
  });
}

/**
 * Same entry as scanned: type, identity, mtime and metadata (content hashes are not compared).
 * Both come from entryFromStats, so size is 0 and target undefined where they do not apply.
 */
function sameEntry(a: EtcEntry, b: EtcEntry): boolean {
  return a.type === b.type && a.ino === b.ino && a.mtimeMs === b.mtimeMs && a.size === b.size
    && a.mode === b.mode && a.uid === b.uid && a.gid === b.gid && a.target === b.target;
}

function staleError(rel: string, what: string): PivotError {
  return new PivotError('etc-merge', `current changed since the plan was made: ${what}`, {
    path: rel,
    fix: 'rerun etc-merge so that it plans against the present /etc',
  });
}

/** The entry (and, for a directory about to go, everything below it) must be as planned. */
function verify(plan: EtcPlan, a: EtcAction, abs: string): void {
  const was = 'was' in a ? a.was : undefined;
  const st = lstatOrUndefined(abs);
  if (!was) {
    if (st) throw staleError(a.path, 'something now exists where nothing was');
    return;
  }
  if (!st || !sameEntry(was, entryFromStats(st, abs))) throw staleError(a.path, 'the entry was changed, replaced or removed');
  const goesAway = was.type === 'dir' && a.action !== 'chmod' && a.action !== 'chown';
  if (!goesAway) return;
  const now = new Map<string, EtcEntry>();
  walk(plan.roots.current, a.path, now);
  const prefix = `${a.path}/`;
  let planned = 0;
  for (const [rel, e] of plan.current) {
    if (!rel.startsWith(prefix)) continue;
    planned++;
    const n = now.get(rel);
    if (!n || !sameEntry(n, e)) {
      throw staleError(rel, 'an entry below a directory to be replaced changed');
    }
  }
  if (planned !== now.size) throw staleError(a.path, 'entries were added below a directory to be replaced');
}

function copyXattrs(src: string, dst: string, isSymlink: boolean, label: string | undefined): void {
  const x = xattrs();
  const attrs = readXattrs(src);
  if (label !== undefined) attrs.set(SELINUX_XATTR, Buffer.from(`${label}\0`));
  for (const [name, value] of attrs) {
    // The kernel refuses user.* on symlinks; the source cannot really have them either.
    if (isSymlink && name.startsWith('user.')) continue;
    // A delta's /usr/etc is opaque: an instruction to the overlay that shows it, invisible
    // through it, and on a live root's /etc (itself an overlay's upper) one it would obey.
    if (name.startsWith('trusted.overlay.')) continue;
    try {
      x.setAttributeSync(dst, name, value);
    } catch (err) {
      throw new PivotError('etc-merge', `cannot ${name === SELINUX_XATTR && label !== undefined ? `label with ${label}` : `copy xattr ${name}`}: ${(err as Error).message}`, {
        path: dst,
        fix: name === SELINUX_XATTR ? 'load the node image\'s policy first (the agent does, in phase selinux) and run the agent in a domain that may relabel /etc' : 'check that the filesystem of /etc supports this extended attribute',
        cause: err,
      });
    }
  }
}

/** Builds the entry from new at `stage`, with new's owner, mode and xattrs (and label, if given). */
function stageFromNew(src: string, stage: string, e: EtcEntry, label: string | undefined): void {
  if (e.type === 'file') copyFileSync(src, stage, constants.COPYFILE_EXCL);
  else if (e.type === 'symlink') symlinkSync(e.target as string, stage);
  else mkdirSync(stage, { mode: 0o700 });
  lchownSync(stage, e.uid, e.gid);
  if (e.type !== 'symlink') chmodSync(stage, e.mode);
  copyXattrs(src, stage, e.type === 'symlink', label);
}

export async function applyEtcMerge(plan: EtcPlan, opts: EtcApplyOptions = {}): Promise<EtcApplyResult> {
  const started = performance.now();
  if (plan.conflicts.length > 0) throw conflictError(plan.conflicts);
  const counts = Object.fromEntries(ACTION_NAMES.map((n) => [n, 0])) as Record<ActionName, number>;
  if (plan.actions.length === 0) {
    return { applied: 0, counts, journalDir: null, seconds: (performance.now() - started) / 1000 };
  }
  const current = resolve(plan.roots.current);
  let someFile: string | undefined;
  for (const [rel, e] of plan.current) {
    if (e.type === 'file') {
      someFile = rel;
      break;
    }
  }
  const journal = openJournal(current, opts.journalDir, opts.durable ?? true, someFile);
  const token = randomBytes(6).toString('hex');
  const verified = new Set<string>();
  let i = 0;
  let action: EtcAction | undefined;
  try {
    for (action of plan.actions) {
      i++;
      const a = action;
      const abs = join(current, a.path);
      if (!verified.has(a.path)) {
        verify(plan, a, abs);
        verified.add(a.path);
      }
      const backup = journal.backupPath(i);
      switch (a.action) {
        case 'add':
        case 'replace':
        case 'symlink':
        case 'mkdir': {
          const was = a.action === 'add' ? undefined : a.was;
          const stage = join(dirname(abs), `.nip-stage.${token}.${i}`);
          journal.append({ i, op: 'create', path: a.path, stage, was: was !== undefined, wasDir: was?.type === 'dir' });
          stageFromNew(join(plan.roots.new, a.path), stage, a.entry, opts.labels?.get(a.path));
          if (was && was.type !== 'dir') linkSync(abs, backup);
          failpoint('etc.apply.action');
          if (!was) {
            // No clobber: a path that appeared since verify() makes this fail and roll back.
            if (a.entry.type === 'dir') renameSync(stage, abs);
            else {
              linkSync(stage, abs);
              unlinkSync(stage);
            }
          } else if (was.type === 'dir') {
            renameSync(abs, backup);
            renameSync(stage, abs);
          } else if (a.entry.type === 'dir') {
            unlinkSync(abs);
            renameSync(stage, abs);
          } else {
            renameSync(stage, abs);
          }
          break;
        }
        case 'remove':
          journal.append({ i, op: 'remove', path: a.path });
          failpoint('etc.apply.action');
          renameSync(abs, backup);
          break;
        case 'chmod':
        case 'chown': {
          const st = lstatSync(abs);
          const symlink = st.isSymbolicLink();
          journal.append({ i, op: 'meta', path: a.path, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid, symlink });
          failpoint('etc.apply.action');
          if (a.action === 'chmod') chmodSync(abs, a.mode);
          else {
            lchownSync(abs, a.uid, a.gid);
            // chown clears setuid/setgid; the mode stays what it was unless a chmod follows.
            if (!symlink) chmodSync(abs, st.mode & 0o7777);
          }
        }
      }
      counts[a.action]++;
    }
    failpoint('etc.apply.commit');
  } catch (err) {
    const cause = asPivotError(err);
    const where = action ? `action ${i} (${action.action} ${JSON.stringify(action.path)})` : 'start';
    try {
      journal.rollback();
    } catch (rbErr) {
      throw new PivotError('etc-merge', `apply failed at ${where}: ${cause.message}; rollback failed too: ${(rbErr as Error).message}`, {
        path: journal.dir,
        fix: 'rerun etc-merge: it finishes the rollback from the journal before planning again',
        cause: err,
      });
    }
    throw new PivotError('etc-merge', `apply failed at ${where}: ${cause.message}; current was rolled back`, {
      ...(cause.path ? { path: cause.path } : action ? { path: action.path } : {}),
      fix: cause.fix,
      cause: err,
      permanent: cause.permanent,
      facts: { action: i, rolledBack: true },
    });
  }
  journal.commit();
  const seconds = (performance.now() - started) / 1000;
  log().info({ applied: i, counts, seconds }, 'etc merge applied');
  return { applied: i, counts, journalDir: journal.dir, seconds };
}
