// One pivot at a time per node: /run/node-image-pivot/pivot.lock, an flock(2) lock.
//
// Why flock(1) on a descriptor we hold, and not an O_EXCL pid file: the kernel ties an flock lock
// to the open file description, and drops it when the last descriptor closes, which happens on
// any death of this process, kill -9 and OOM included. Nothing is ever stale, so there is no
// takeover protocol to get wrong (with a pid file, two waiters can both judge a dead holder
// stale, both remove the file and both "win"), and a reused pid cannot make a dead holder look
// alive, because liveness is never inferred from a pid. Node has no flock(), so util-linux's
// `flock` (on every CoreOS/RHCOS and Debian system) locks the descriptor we pass it as fd 3 and
// exits; the lock stays with our copy of the descriptor. Our copy is opened O_CLOEXEC (libuv
// always does), so the children the pivot runs (mount, setfiles, systemd-notify) never inherit
// it and cannot keep the lock past our exit. The file's content (pid, unit, start) is only there
// so that a waiting run can say who it waits for.
import { spawn } from 'node:child_process';
import { closeSync, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { PivotError } from './errors.ts';
import { log } from './log.ts';
import { readBootId } from './state.ts';

export const DEFAULT_LOCK_FILE = '/run/node-image-pivot/pivot.lock';
/** Tests point runs at their own lock file; a node never sets this. */
export const LOCK_FILE_ENV = 'NODE_IMAGE_PIVOT_LOCK_FILE';
/** How long a second run waits by default: longer than a slow pull, shorter than forever. */
export const DEFAULT_LOCK_WAIT_SECONDS = 1800;

const FLOCK_CONFLICT = 75;

export interface LockHolder {
  pid: number;
  unit?: string;
  bootId?: string;
  startedAt?: string;
  argv?: string[];
}

export function lockFilePath(): string {
  return process.env[LOCK_FILE_ENV] || DEFAULT_LOCK_FILE;
}

/** Pure: the systemd unit a process runs in, from the text of /proc/PID/cgroup. */
export function unitFromCgroup(text: string): string | undefined {
  for (const line of text.split('\n')) {
    const path = line.split(':').slice(2).join(':');
    const unit = path.split('/').reverse().find((c) => /\.(service|scope)$/.test(c));
    if (unit) return unit;
  }
  return undefined;
}

function readUnitOf(pid: number | 'self'): string | undefined {
  try {
    return unitFromCgroup(readFileSync(`/proc/${pid}/cgroup`, 'utf8'));
  } catch {
    return undefined;
  }
}

/** Who holds the lock, from the lock file, with the unit re-read from /proc while it lives. */
export function readHolder(path: string): LockHolder | undefined {
  let holder: LockHolder;
  try {
    holder = JSON.parse(readFileSync(path, 'utf8')) as LockHolder;
  } catch {
    return undefined; // just created, or being rewritten by a new holder
  }
  if (!Number.isInteger(holder.pid)) return undefined;
  const unit = readUnitOf(holder.pid);
  return unit ? { ...holder, unit } : holder;
}

export function describeHolder(h: LockHolder | undefined): string {
  if (!h) return 'another node-image-pivot run (it has not written its pid yet)';
  return `pid ${h.pid}${h.unit ? ` (${h.unit})` : ''}${h.startedAt ? `, running since ${h.startedAt}` : ''}`;
}

/** flock(1) on our fd 3: 0 locked, FLOCK_CONFLICT busy or timed out. */
function runFlock(fd: number, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn('flock', [...args, '--conflict-exit-code', String(FLOCK_CONFLICT), '3'], { stdio: ['ignore', 'ignore', 'pipe', fd] });
    // A run stopped while it waits must not leave the waiting flock behind.
    const kill = (): void => { child.kill('SIGKILL'); };
    process.once('exit', kill);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', (err) => {
      process.off('exit', kill);
      reject(new PivotError('internal', `cannot run flock(1) to take the pivot lock: ${(err as NodeJS.ErrnoException).code ?? err.message}`, {
        fix: 'install util-linux (it provides /usr/bin/flock)', cause: err,
      }));
    });
    child.on('close', (code) => {
      process.off('exit', kill);
      if (code === 0 || code === FLOCK_CONFLICT) resolve(code);
      else reject(new PivotError('internal', `flock(1) failed with exit code ${code}: ${stderr.trim()}`, { fix: 'check that /run is writable and util-linux is installed' }));
    });
  });
}

export interface HeldLock {
  path: string;
  /** Lets go early; otherwise the kernel releases it when this process exits. */
  release(): void;
}

export interface AcquireOptions {
  path?: string;
  /** false: fail with exit 11 at once when another run holds the lock. */
  wait: boolean;
  waitSeconds?: number;
}

function busyError(path: string, holder: LockHolder | undefined, waited?: number): PivotError {
  return new PivotError('busy', waited === undefined
    ? `another pivot is running on this node: ${describeHolder(holder)}`
    : `another pivot still held the lock after ${waited} s: ${describeHolder(holder)}`, {
    path,
    fix: waited === undefined
      ? `wait for it (run without --no-wait), or look at it with 'node-image-pivot status' and 'journalctl _PID=${holder?.pid ?? 'PID'}'`
      : `look at it with 'node-image-pivot status' and 'journalctl _PID=${holder?.pid ?? 'PID'}'; stop it with 'systemctl stop ${holder?.unit ?? 'UNIT'}' if it is stuck`,
    facts: { holder },
  });
}

/** Takes the node's pivot lock, waiting (bounded, with a log line naming the holder) unless told not to. */
export async function acquirePivotLock(opts: AcquireOptions): Promise<HeldLock> {
  const path = opts.path ?? lockFilePath();
  mkdirSync(dirname(path), { recursive: true, mode: 0o755 });
  const fd = openSync(path, 'a+', 0o644);
  try {
    if ((await runFlock(fd, ['--exclusive', '--nonblock'])) === FLOCK_CONFLICT) {
      const holder = readHolder(path);
      if (!opts.wait) throw busyError(path, holder);
      const seconds = opts.waitSeconds ?? DEFAULT_LOCK_WAIT_SECONDS;
      log().warn({ lock: path, holder, waitSeconds: seconds },
        `another pivot is running on this node: ${describeHolder(holder)}; waiting up to ${seconds} s for it to finish`);
      if ((await runFlock(fd, ['--exclusive', '--timeout', String(seconds)])) === FLOCK_CONFLICT) throw busyError(path, readHolder(path), seconds);
      log().info({ lock: path }, 'the other pivot finished; this run goes on');
    }
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  const me: LockHolder = {
    pid: process.pid, bootId: readBootId(), startedAt: new Date().toISOString(), argv: process.argv.slice(1),
    ...(readUnitOf('self') ? { unit: readUnitOf('self')! } : {}),
  };
  // a+ appends, so the file is emptied first; a waiter reading in between sees no holder yet.
  ftruncateSync(fd, 0);
  writeSync(fd, `${JSON.stringify(me)}\n`);
  let released = false;
  return {
    path,
    release() {
      if (released) return;
      released = true;
      closeSync(fd);
    },
  };
}
