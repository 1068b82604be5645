// Every bound on what a registry (or a mirror, a CDN, a token realm) controls, in one place, and
// the body reader that enforces them: a size cap per kind of document, the pull's deadline
// (timeouts.pullSeconds, enforced mid-transfer through an AbortSignal), and a minimum throughput
// so that a trickle that never trips the read timeout still counts as a stall.
// docs/reliability.md ("Hostile registry") lists the values and their exit codes.
import { PivotError } from '../errors.ts';
import { DEADLINE_CODE, networkError, type Timeouts } from './transport.ts';

/** Token responses: real ones (JWTs with a few claims) are a few KiB. */
export const MAX_TOKEN_BYTES = 1024 * 1024;
/** Image manifests and indexes (containers/image uses the same 4 MiB). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Image configs (checked against the descriptor before the fetch). */
export const MAX_CONFIG_BYTES = 16 * 1024 * 1024;
/** Error bodies are read for their error codes only. */
export const MAX_ERROR_BODY_BYTES = 64 * 1024;
/** overlayfs stacks at most 500 lower layers; no image we can use has more. */
export const MAX_LAYERS = 500;
/** A response slower than this over a whole read window (timeouts.readSeconds) is a stall. */
export const MIN_BYTES_PER_SECOND = 1024;

/** The whole pull's deadline; its signal aborts whatever request or body is in flight. */
/** setTimeout fires at once for delays past 2^31-1 ms (~24.8 days): longer budgets are capped there. */
export function budgetTimerDelayMs(seconds: number): number {
  return Math.min(seconds * 1000, 2 ** 31 - 1);
}

export class PullBudget {
  readonly seconds: number;
  readonly deadline: number;
  private readonly controller = new AbortController();
  private readonly timer: NodeJS.Timeout;

  constructor(seconds: number, now = Date.now()) {
    this.seconds = seconds;
    this.deadline = now + seconds * 1000;
    this.timer = setTimeout(() => this.controller.abort(), budgetTimerDelayMs(seconds));
    // The budget must not keep a finished process alive.
    this.timer.unref();
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  expired(now = Date.now()): boolean {
    return this.controller.signal.aborted || now >= this.deadline;
  }

  /**
   * Exit 3, and not retried: the budget is spent for every source alike. Not permanent either:
   * a rerun resumes what this one verified (pull --oci-layout keeps DIR.partial for it).
   */
  error(host: string, what: string, detail?: string): PivotError {
    return new PivotError('network', `the pull time budget of ${this.seconds} s (timeouts.pullSeconds) ran out while fetching ${what} from ${host}${detail ? ` (${detail})` : ''}`, {
      fix: 'check the network path to the registry, or raise timeouts.pullSeconds in the config',
      facts: { host, limit: 'timeouts.pullSeconds', seconds: this.seconds, stage: 'transfer', code: DEADLINE_CODE },
      reason: 'pull-deadline',
    });
  }

  close(): void {
    clearTimeout(this.timer);
  }
}

/** Whether an error is the pull's deadline (which no other source or attempt can help). */
export function isDeadline(err: unknown): boolean {
  return err instanceof PivotError && err.reason === 'pull-deadline';
}

export interface BodyGuard {
  host: string;
  /** What is being fetched, for messages: "manifest ns/app:v1". */
  what: string;
  timeouts: Timeouts;
  budget?: PullBudget;
  overTls?: boolean;
}

/** The error a failed body read becomes: the budget when it ran out, else a named network error. */
export function bodyError(err: unknown, g: BodyGuard): PivotError {
  if (err instanceof PivotError) return err;
  if (g.budget?.expired()) return g.budget.error(g.host, g.what);
  return networkError(err, g.host, g.what, g.overTls, g.timeouts);
}

/** A stall by throughput: retried like a broken connection (a Range resume for blobs). */
function slowError(g: BodyGuard, bytes: number, ms: number): PivotError {
  const window = g.timeouts.readSeconds;
  return new PivotError('network', `transfer from ${g.host} stalled while fetching ${g.what}: ${bytes} bytes in ${(ms / 1000).toFixed(1)} s, under the minimum of ${MIN_BYTES_PER_SECOND} bytes/s over ${window} s (timeouts.readSeconds)`, {
    fix: 'check the network path to the registry, or raise timeouts.readSeconds in the config for a very slow link',
    facts: { host: g.host, stage: 'transfer', code: 'SLOW_TRANSFER', limit: 'timeouts.readSeconds', minBytesPerSecond: MIN_BYTES_PER_SECOND },
    reason: 'transfer',
  });
}

/**
 * The body's chunks, with the minimum-throughput rule applied per read window and every failure
 * turned into a PivotError naming the host (and the budget, once it is spent).
 */
export async function* guardedChunks(body: AsyncIterable<unknown>, g: BodyGuard, now: () => number = Date.now): AsyncGenerator<Buffer> {
  const windowMs = g.timeouts.readSeconds * 1000;
  let windowStart = now();
  let windowBytes = 0;
  try {
    for await (const raw of body) {
      const chunk = raw as Buffer;
      windowBytes += chunk.length;
      const t = now();
      if (t - windowStart >= windowMs) {
        if (windowBytes < MIN_BYTES_PER_SECOND * ((t - windowStart) / 1000)) throw slowError(g, windowBytes, t - windowStart);
        windowStart = t;
        windowBytes = 0;
      }
      yield chunk;
    }
  } catch (err) {
    throw bodyError(err, g);
  }
}

/** Reads a whole body of at most `cap` bytes; more is exit 3 naming the host, never buffered. */
export async function readCapped(body: AsyncIterable<unknown> & { destroy?(err?: Error): unknown }, cap: number, g: BodyGuard, contentLength?: string | string[]): Promise<Buffer> {
  const declared = Number(Array.isArray(contentLength) ? contentLength[0] : contentLength ?? 0);
  if (declared > cap) {
    body.destroy?.();
    throw tooLarge(g, cap, declared);
  }
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of guardedChunks(body, g)) {
    n += c.length;
    if (n > cap) {
      body.destroy?.();
      throw tooLarge(g, cap);
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

function tooLarge(g: BodyGuard, cap: number, declared?: number): PivotError {
  const size = declared !== undefined ? `is ${declared} bytes, over` : 'is larger than';
  return new PivotError('registry', `${g.what} from ${g.host} ${size} the ${cap}-byte limit`, {
    fix: `check the registry at ${g.host}: no genuine response of this kind is that large`,
    facts: { host: g.host, limit: cap, ...(declared !== undefined ? { declared } : {}) },
    permanent: true,
  });
}
