// --progress-fd N: one JSON object per line for installers' UIs, in the shape of bootc's
// progress protocol (docs/progress.md). The reader is someone else's process, so nothing it does
// may stall or fail the pivot: the fd is made non-blocking (libuv does that for a pipe or a
// socket), at most MAX_QUEUED_BYTES wait in memory, lossy events are dropped when the reader is
// behind, and a reader that went away (EPIPE) ends the stream with one log line.
import { closeSync, fstatSync, readFileSync, readdirSync, readlinkSync, writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { PivotError, isErrno } from './errors.ts';
import { log } from './log.ts';

export const PROGRESS_SCHEMA = 'org.openshift.node-image-pivot.progress/v1';

export interface ByteSubtask {
  subtask: string;
  description: string;
  id: string;
  bytesCached: number;
  bytes: number;
  bytesTotal: number;
}
export interface StepSubtask {
  subtask: string;
  description: string;
  id: string;
  completed: boolean;
}
export interface ProgressResult {
  /** What the command ended with: the pivot's outcome, or failed. */
  result: 'done' | 'skipped' | 'dry-run' | 'failed';
  exitCode: number;
  /** With failed: the same one line the journal shows, and its parts. */
  error?: { kind: string; message: string; fix: string; line: string; path?: string; field?: string };
  /** With skipped: why. */
  reason?: string;
  digest?: string;
}

export type ProgressEvent =
  | { type: 'Start'; version: string; command: string }
  | { type: 'ProgressBytes'; task: string; description: string; id: string; bytesCached: number; bytes: number; bytesTotal: number;
    stepsCached: number; steps: number; stepsTotal: number; subtasks: ByteSubtask[] }
  | { type: 'ProgressSteps'; task: string; description: string; id: string; stepsCached: number; steps: number; stepsTotal: number; subtasks: StepSubtask[] }
  | ({ type: 'Result' } & ProgressResult);

/** O_ACCMODE of an fd: 0 read, 1 write, 2 both. */
function accessMode(fd: number | string): number {
  try {
    return parseInt(/^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1] ?? '0', 8) & 3;
  } catch {
    return -1;
  }
}

/**
 * Node opens descriptors of its own before any of our code runs: epoll, eventfd and io_uring
 * (anon inodes) and pipes whose both ends it holds. A mistyped --progress-fd can name one of
 * them, and writing there (or closing it) aborts the process; a descriptor the parent passed is
 * a file, a FIFO, a socket or one end of a pipe.
 */
function isNodesOwn(fd: number, target: string): boolean {
  if (target.startsWith('anon_inode:')) return true;
  if (!/^pipe:\[\d+\]$/.test(target)) return false;
  const mode = accessMode(fd);
  return readdirSync('/proc/self/fd').some((other) => {
    if (Number(other) === fd) return false;
    try {
      return readlinkSync(`/proc/self/fd/${other}`) === target && accessMode(other) !== mode;
    } catch {
      return false;
    }
  });
}

/** Bytes that may wait for a slow reader: enough for every required event of a run, many times. */
export const MAX_QUEUED_BYTES = 256 * 1024;
/** A lossy event is only queued when the reader is this close to caught up. */
const LOSSY_QUEUE_BYTES = 8 * 1024;
/** How long close() waits for a reader to take what is queued before giving up on it. */
const CLOSE_GRACE_MS = 1000;

/** Pure: the fd argument, refusing stdin/stdout/stderr (stdout carries --json output). */
export function parseProgressFd(text: string): number {
  const fd = /^\d{1,9}$/.test(text) ? Number(text) : NaN;
  if (!Number.isInteger(fd) || fd < 3) {
    throw new PivotError('usage', `--progress-fd ${JSON.stringify(text)} must be a file descriptor number of 3 or more`, {
      field: '--progress-fd', fix: 'open the pipe or FIFO on fd 3 or higher in the parent (docs/progress.md) and pass that number',
    });
  }
  return fd;
}

export interface JsonlStats { written: number; droppedLossy: number; droppedRequired: number; counts: Record<string, number> }

/** Writes events as JSON lines to one fd, never blocking the caller. */
export class JsonlProgressWriter {
  private socket: Socket | undefined;
  private fileFd: number | undefined;
  private stopped = false;
  private closing = false;
  private overflowLogged = false;
  readonly stats: JsonlStats = { written: 0, droppedLossy: 0, droppedRequired: 0, counts: {} };

  readonly fd: number;

  constructor(fd: number) {
    this.fd = fd;
    const notPassed = (why: string, cause?: unknown): PivotError => new PivotError('usage', `--progress-fd ${fd} ${why}`, {
      field: '--progress-fd', fix: `open fd ${fd} before starting node-image-pivot, e.g. '${fd}<>/run/installer/progress.fifo' in the unit's shell line (docs/progress.md)`,
      cause,
    });
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch (err) {
      throw notPassed(`is not open${isErrno(err) ? ` (${err.code})` : ''}`, err);
    }
    if (isNodesOwn(fd, target)) throw notPassed(`was not passed to node-image-pivot (it is one of Node's own descriptors, ${target})`);
    const st = fstatSync(fd);
    if (st.isFIFO() || st.isSocket()) {
      // libuv sets O_NONBLOCK on the fd and queues what the pipe does not take at once.
      this.socket = new Socket({ fd, readable: false, writable: true });
      this.socket.on('error', (err) => this.stop(err));
      // The pivot's exit must not wait for a reader.
      this.socket.unref();
    } else {
      // A regular file or a character device (a terminal, /dev/null) never holds a writer up.
      this.fileFd = fd;
    }
  }

  /** Required events are kept while a reader is behind (up to MAX_QUEUED_BYTES); lossy ones are not. */
  write(event: ProgressEvent, required: boolean): void {
    if (this.stopped || this.closing) return;
    const line = `${JSON.stringify(event)}\n`;
    if (this.fileFd !== undefined) {
      try {
        writeSync(this.fileFd, line);
      } catch (err) {
        this.stop(err as Error);
        return;
      }
    } else {
      const queued = this.socket!.writableLength;
      if (!required && queued > LOSSY_QUEUE_BYTES) {
        this.stats.droppedLossy++;
        return;
      }
      if (queued + line.length > MAX_QUEUED_BYTES) {
        if (required) this.stats.droppedRequired++;
        else this.stats.droppedLossy++;
        if (!this.overflowLogged) {
          this.overflowLogged = true;
          log().warn({ progressFd: this.fd, queuedBytes: queued }, `progress reader on fd ${this.fd} is not reading: dropping progress events until it catches up`);
        }
        return;
      }
      this.socket!.write(line);
    }
    this.stats.written++;
    this.stats.counts[event.type] = (this.stats.counts[event.type] ?? 0) + 1;
  }

  private stop(err: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    const code = (err as NodeJS.ErrnoException).code;
    log().warn({ progressFd: this.fd, code }, code === 'EPIPE'
      ? `progress reader on fd ${this.fd} went away (EPIPE): no more progress events; the pivot goes on`
      : `cannot write progress to fd ${this.fd} (${code ?? err.message}): no more progress events; the pivot goes on`);
    this.socket?.destroy();
  }

  /** Gives a reader CLOSE_GRACE_MS to take what is queued, then lets go of the fd either way. */
  async close(): Promise<void> {
    if (this.fileFd !== undefined) {
      this.stopped = true;
      try {
        closeSync(this.fileFd);
      } catch { /* already closed */ }
      return;
    }
    const s = this.socket!;
    if (this.stopped || s.destroyed) return;
    // No more events; an EPIPE while the queue drains is still logged by stop().
    this.closing = true;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => { s.destroy(); resolve(); }, CLOSE_GRACE_MS);
      timer.unref();
      s.end(() => { clearTimeout(timer); s.destroy(); resolve(); });
      s.once('close', () => { clearTimeout(timer); resolve(); });
    });
  }
}
