// Structured logging. Under systemd stdout goes to the journal, which reads a leading `<N>` as the
// syslog priority of the line, so `journalctl -p warning -u node-image-pivot` works. On a TTY a
// human reads the output, so it is pretty-printed instead.
import { writeSync } from 'node:fs';
import { Writable } from 'node:stream';
import pino from 'pino';
import pretty from 'pino-pretty';

export type Logger = pino.Logger;

/** pino level number -> journald priority (sd-daemon.h). */
export function journaldPriority(level: number): number {
  if (level >= 60) return 2; // fatal -> crit
  if (level >= 50) return 3; // error -> err
  if (level >= 40) return 4; // warn -> warning
  if (level >= 30) return 6; // info -> info
  return 7; // debug, trace
}

/** Keys whose values are credentials wherever they appear, at any depth. */
const SECRET_KEY = /pass(word)?|secret|token|auth(?!or)|credential|cookie|bearer|identitytoken|apikey|private.?key/i;
/** Keys that name where a credential lives, not the credential: an operator needs these. */
const LOCATION_KEY = /(file|path|dir|source)$/i;
/** Credential shapes inside free text: HTTP auth headers, URL userinfo, base64 basic auth. */
const SECRET_TEXT: Array<[RegExp, string]> = [
  [/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+/g, '$1 [REDACTED]'],
  [/(\b[a-z][a-z0-9+.-]*:\/\/)[^/\s:@]+:[^/\s@]+@/gi, '$1[REDACTED]@'],
  [/("auth"\s*:\s*")[^"]*"/g, '$1[REDACTED]"'],
];
export const REDACTED = '[REDACTED]';

export function redactText(text: string): string {
  let out = text;
  for (const [pattern, replacement] of SECRET_TEXT) out = out.replace(pattern, replacement);
  return out;
}

/** Deep copy with every credential-looking key or value replaced. Cycles are cut. */
export function redact(value: unknown, seen = new WeakSet<object>()): unknown {
  if (typeof value === 'string') return redactText(value);
  if (value === null || typeof value !== 'object') return value;
  if (seen.has(value)) return '[Circular]';
  seen.add(value);
  if (Array.isArray(value)) return value.map((v) => redact(v, seen));
  if (value instanceof Error) {
    return { type: value.name, message: redactText(value.message), ...(redact({ ...value }, seen) as object) };
  }
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) return `<${value.byteLength} bytes>`;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k] = SECRET_KEY.test(k) && !LOCATION_KEY.test(k) && v != null && v !== '' && typeof v !== 'boolean' && typeof v !== 'number'
      ? REDACTED
      : redact(v, seen);
  }
  return out;
}

/** Prefixes each JSON line with its journald priority and writes it synchronously. */
class JournaldLines extends Writable {
  private readonly fd: number;
  private readonly write1: (line: string) => void;
  constructor(fd: number, write?: (line: string) => void) {
    super();
    this.fd = fd;
    this.write1 = write ?? ((line) => writeAllSync(this.fd, line));
  }
  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error) => void): void {
    try {
      const text = chunk.toString('utf8');
      for (const line of text.split('\n')) {
        if (!line) continue;
        let level = 30;
        const m = /"level":(\d+)/.exec(line);
        if (m) level = Number(m[1]);
        this.write1(`<${journaldPriority(level)}>${line}\n`);
      }
      done();
    } catch (err) {
      done(err as Error);
    }
  }
}

const pause = new Int32Array(new SharedArrayBuffer(4));

/**
 * Every byte, whatever the reader's pace: once anything touches process.stderr, Node makes a
 * pipe on fd 2 non-blocking, and a full pipe answers EAGAIN. Waiting (synchronously, like a
 * blocking write) keeps the line whole and the exit code independent of how stderr drains.
 */
export function writeAllSync(fd: number, text: string, write: typeof writeSync = writeSync): void {
  const buf = Buffer.from(text);
  let off = 0;
  let waitMs = 1;
  while (off < buf.length) {
    try {
      off += write(fd, buf, off);
      waitMs = 1;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EAGAIN') throw err;
      Atomics.wait(pause, 0, 0, waitMs);
      waitMs = Math.min(waitMs * 2, 50);
    }
  }
}

export interface LoggerOptions {
  level?: string;
  /** Force pretty output (default: stdout is a TTY). */
  pretty?: boolean;
  /** Collect lines instead of writing to fd 2, for tests. */
  sink?: (line: string) => void;
  fd?: number;
}

/**
 * Logs go to stderr so that stdout carries only command output (--json, summaries). Under systemd
 * both reach the journal, and SyslogLevelPrefix= (on by default) reads the `<N>` on either.
 */
export function createLogger(opts: LoggerOptions = {}): Logger {
  const fd = opts.fd ?? 2;
  const level = opts.level ?? process.env.NODE_IMAGE_PIVOT_LOG_LEVEL ?? 'info';
  const options: pino.LoggerOptions = {
    level,
    base: { app: 'node-image-pivot' },
    timestamp: pino.stdTimeFunctions.isoTime,
    messageKey: 'msg',
    formatters: {
      level: (_label, number) => ({ level: number }),
      log: (obj) => redact(obj) as Record<string, unknown>,
    },
    hooks: {
      logMethod(args, method) {
        const scrubbed = args.map((a) => (typeof a === 'string' ? redactText(a) : a)) as Parameters<typeof method>;
        method.apply(this, scrubbed);
      },
    },
    serializers: { err: (e: unknown) => redact(e) },
  };
  const usePretty = opts.pretty ?? (opts.sink === undefined && process.stderr.isTTY === true);
  if (usePretty) {
    // pino's worker-thread transports cannot be resolved inside the single executable.
    const destination = opts.sink
      ? new Writable({ write(c: Buffer, _e, d) { opts.sink?.(c.toString()); d(); } })
      : undefined;
    return pino(options, pretty({ sync: true, colorize: !opts.sink, translateTime: 'HH:MM:ss.l', ignore: 'pid,hostname,app', destination: destination ?? fd }));
  }
  return pino(options, new JournaldLines(fd, opts.sink));
}

let shared: Logger | undefined;
/** The process-wide logger. cli.ts may replace it with setLogger() after parsing --log-level. */
export function log(): Logger {
  shared ??= createLogger();
  return shared;
}
export function setLogger(logger: Logger): void {
  shared = logger;
}
