// Named failpoints let tests inject a fault at an exact step of a real run, the way bootupd and
// FreeBSD's fail(9) do. NODE_IMAGE_PIVOT_FAILPOINTS=name:action[@N][,name:action[@N]...]
//   error    throw a PivotError of kind 'internal' (or the kind given as error=KIND)
//   kill     SIGKILL this process: nothing gets to clean up, as in a power cut
//   exit=N   exit immediately with code N
//   sleep=MS block for MS milliseconds, event loop included, as a hung syscall would
//   park     (async sites only) announce the park in NODE_IMAGE_PIVOT_PARKED_FILE, then wait with
//            the event loop running until a stop signal arrives (or park=MS elapses, default
//            10 min); a SIGTERM test waits for the file, signals, and knows where it landed
//   @N       trigger on the N-th hit only (1-based); without it, on every hit
// When the variable is unset, failpoint() is one Map lookup on an empty map.
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PivotError, type ErrorKind } from './errors.ts';

export type FailpointAction =
  | { type: 'error'; kind: ErrorKind }
  | { type: 'kill' }
  | { type: 'exit'; code: number }
  | { type: 'sleep'; ms: number }
  | { type: 'park'; ms: number };

export interface FailpointSpec {
  name: string;
  action: FailpointAction;
  /** Trigger only on this hit (1-based); undefined means every hit. */
  at: number | undefined;
}

export const ENV_VAR = 'NODE_IMAGE_PIVOT_FAILPOINTS';
/** Where `park` announces itself: one line `NAME HIT PID`. */
export const PARKED_FILE_VAR = 'NODE_IMAGE_PIVOT_PARKED_FILE';
const STOP_SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;

export function parkedFile(): string {
  return process.env[PARKED_FILE_VAR] || join(tmpdir(), 'node-image-pivot.parked');
}

/** Pure parser, so that a malformed spec is a usage error and not a silently ignored string. */
export function parseFailpoints(spec: string): FailpointSpec[] {
  const out: FailpointSpec[] = [];
  for (const raw of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^([a-z0-9_.-]+):(error|kill|exit|sleep|park)(?:=([a-z0-9-]+))?(?:@(\d+))?$/i.exec(raw);
    if (!m) {
      throw new PivotError('usage', `malformed failpoint ${JSON.stringify(raw)}`, {
        field: ENV_VAR,
        fix: 'use name:error|kill|exit=N|sleep=MS|park[=MS][@HIT], comma-separated, or unset the variable',
      });
    }
    const [, name, type, arg, at] = m as unknown as [string, string, string, string | undefined, string | undefined];
    let action: FailpointAction;
    switch (type) {
      case 'error':
        action = { type: 'error', kind: (arg as ErrorKind | undefined) ?? 'internal' };
        break;
      case 'kill':
        action = { type: 'kill' };
        break;
      case 'exit':
        action = { type: 'exit', code: Number(arg ?? 1) };
        break;
      case 'park':
        action = { type: 'park', ms: Number(arg ?? 600_000) };
        break;
      default:
        action = { type: 'sleep', ms: Number(arg ?? 1000) };
    }
    out.push({ name, action, at: at === undefined ? undefined : Number(at) });
  }
  return out;
}

let armed: Map<string, FailpointSpec[]> | undefined;
const hits = new Map<string, number>();

function load(): Map<string, FailpointSpec[]> {
  const map = new Map<string, FailpointSpec[]>();
  const env = process.env[ENV_VAR];
  if (env) {
    for (const spec of parseFailpoints(env)) map.set(spec.name, [...(map.get(spec.name) ?? []), spec]);
  }
  return map;
}

/** Re-reads the environment; tests call this after changing process.env. */
export function resetFailpoints(): void {
  armed = undefined;
  hits.clear();
}


function matching(name: string): Array<[FailpointSpec, number]> {
  armed ??= load();
  if (armed.size === 0) return [];
  const specs = armed.get(name);
  if (!specs) return [];
  const n = (hits.get(name) ?? 0) + 1;
  hits.set(name, n);
  return specs.filter((s) => s.at === undefined || s.at === n).map((s) => [s, n]);
}

/**
 * Marks a step. Synchronous so that it can sit in hot loops; `sleep` uses Atomics.wait so the
 * process is really stuck there, as a hung syscall would be.
 */
export function failpoint(name: string): void {
  for (const [spec, n] of matching(name)) {
    if (spec.action.type === 'park') {
      throw new PivotError('usage', `failpoint ${name} cannot park: it is a synchronous site`, {
        field: ENV_VAR, fix: 'park only at phase.*, pivot.switched and mount.* failpoints (see docs/reliability.md)',
      });
    }
    trigger(name, spec.action, n);
  }
}

/** A step that may also park: the caller awaits, so signal handlers run while it waits. */
export async function failpointAsync(name: string): Promise<void> {
  for (const [spec, n] of matching(name)) {
    if (spec.action.type === 'park') await park(name, n, spec.action.ms);
    else trigger(name, spec.action, n);
  }
}

function park(name: string, hit: number, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const release = (): void => {
      clearTimeout(timer);
      for (const s of STOP_SIGNALS) process.removeListener(s, release);
      resolve();
    };
    // Listening before announcing: a signal sent the moment the file appears is not missed.
    for (const s of STOP_SIGNALS) process.on(s, release);
    const timer = setTimeout(release, ms);
    writeFileSync(parkedFile(), `${name} ${hit} ${process.pid}\n`);
  });
}

function trigger(name: string, action: Exclude<FailpointAction, { type: 'park' }>, hit: number): void {
  switch (action.type) {
    case 'error':
      throw new PivotError(action.kind, `failpoint ${name} triggered at hit ${hit}`, {
        fix: `unset ${ENV_VAR}; this fault was injected on purpose`,
        facts: { failpoint: name, hit },
        permanent: false,
      });
    case 'kill':
      process.kill(process.pid, 'SIGKILL');
      // SIGKILL is delivered asynchronously on some kernels; never run past a kill failpoint.
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10_000);
      return;
    case 'exit':
      process.exit(action.code);
      return;
    case 'sleep':
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, action.ms);
  }
}
