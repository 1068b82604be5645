// Progress for the three audiences that watch a pivot: `systemctl status node-image-pivot`
// (sd_notify STATUS=), a person at a terminal (a one-line bar on stderr), and an installer's UI
// (--progress-fd, JSON lines: src/progress-jsonl.ts, docs/progress.md). Throttled so that a fast
// unpack does not turn into thousands of notify calls or lines.
import { sdNotify, type NotifyFields } from './systemd/notify.ts';
import { PROGRESS_SCHEMA, type JsonlProgressWriter, type ProgressEvent, type ProgressResult } from './progress-jsonl.ts';

export interface ProgressSnapshot {
  phase: string;
  detail?: string;
  done?: number;
  total?: number;
  unit?: 'bytes' | 'entries' | 'actions';
  /** Byte progress per layer (with unit 'bytes'): the per-layer subtasks of --progress-fd. */
  layers?: LayerProgress[];
  /** How many layers the image has (layers lists only those started so far). */
  layerCount?: number;
}

export interface LayerProgress {
  digest: string;
  bytes: number;
  bytesTotal: number;
}

/**
 * Turns the unpacker's position (one layer at a time, in order) into per-layer progress: the
 * layers seen so far, earlier ones complete. Feed it every UnpackProgress of one pull.
 */
export function layerTracker(): (p: { layer: number; digest: string; size: number; layerBytesIn: number }) => LayerProgress[] {
  const seen: LayerProgress[] = [];
  return (p) => {
    for (const l of seen) l.bytes = l.bytesTotal;
    seen[p.layer - 1] = { digest: p.digest, bytesTotal: p.size, bytes: Math.min(p.layerBytesIn, p.size) };
    return seen.filter(Boolean).map((l) => ({ ...l }));
  };
}

/** The unpacker's onProgress, as byte progress of the pull. */
export function pullProgress(progress: Progress): (p: UnpackProgressLike) => void {
  const track = layerTracker();
  return (p) => progress.update({
    phase: 'pull', detail: `layer ${p.layer}/${p.layers}`, done: p.bytesIn, total: p.bytesTotal, unit: 'bytes', layers: track(p), layerCount: p.layers,
  });
}
type UnpackProgressLike = { layer: number; layers: number; bytesIn: number; bytesTotal: number; digest: string; size: number; layerBytesIn: number };

/** Pure: the ProgressBytes event of a snapshot with unit 'bytes'. */
export function bytesEvent(p: ProgressSnapshot, id: string): ProgressEvent {
  const layers = p.layers ?? [];
  return {
    type: 'ProgressBytes', task: p.phase, description: p.detail ? `${p.phase}: ${p.detail}` : p.phase, id,
    bytesCached: 0, bytes: p.done ?? 0, bytesTotal: p.total ?? 0,
    stepsCached: 0, steps: layers.filter((l) => l.bytesTotal > 0 && l.bytes >= l.bytesTotal).length, stepsTotal: p.layerCount ?? layers.length,
    subtasks: layers.map((l, i) => ({
      subtask: 'layer', description: `layer ${i + 1}/${p.layerCount ?? layers.length}`, id: l.digest, bytesCached: 0, bytes: l.bytes, bytesTotal: l.bytesTotal,
    })),
  };
}

/** Pure: the text both sinks show, e.g. "pull: layer 3/8, 412.0/980.5 MiB (42%)". */
export function formatProgress(p: ProgressSnapshot): string {
  const parts = [p.phase];
  if (p.detail) parts.push(p.detail);
  if (p.done !== undefined) {
    const fmt = (n: number): string => (p.unit === 'bytes' ? `${(n / 1024 ** 2).toFixed(1)}` : String(n));
    const suffix = p.unit === 'bytes' ? ' MiB' : p.unit ? ` ${p.unit}` : '';
    const pct = p.total ? ` (${Math.min(100, Math.floor((100 * p.done) / p.total))}%)` : '';
    parts.push(`${fmt(p.done)}${p.total ? `/${fmt(p.total)}` : ''}${suffix}${pct}`);
  }
  return `${parts[0]}: ${parts.slice(1).join(', ')}`.replace(/: $/, '');
}

/** Pure: a fixed-width bar for a terminal line. */
export function progressBar(done: number, total: number, width = 24): string {
  const ratio = total > 0 ? Math.min(1, done / total) : 0;
  const full = Math.round(ratio * width);
  return `[${'#'.repeat(full)}${'.'.repeat(width - full)}]`;
}

export type NotifyFn = (fields: NotifyFields) => Promise<unknown>;

/** At most 5 lossy JSON lines a second, as bootc does. */
export const JSONL_INTERVAL_MS = 200;

export interface ProgressOptions {
  notify?: NotifyFn;
  tty?: boolean;
  intervalMs?: number;
  /** --progress-fd: where the JSON lines go, with the command and its steps (the phases). */
  jsonl?: { writer: JsonlProgressWriter; command: string; steps: readonly string[]; id: string };
  /** The clock of the throttles (tests). */
  now?: () => number;
}

export class Progress {
  private lastSent = 0;
  private lastText = '';
  private lastJsonl = 0;
  private pending: Promise<void> = Promise.resolve();
  private readonly tty: boolean;
  private readonly notify: NotifyFn;
  private readonly intervalMs: number;
  private readonly jsonl: ProgressOptions['jsonl'];
  private stepsDone = 0;
  private unsentBytes: ProgressSnapshot | undefined;
  private readonly now: () => number;
  private started = false;

  constructor(opts: ProgressOptions = {}) {
    this.notify = opts.notify ?? ((f) => sdNotify(f));
    this.tty = opts.tty ?? process.stderr.isTTY === true;
    this.intervalMs = opts.intervalMs ?? 1000;
    this.jsonl = opts.jsonl;
    this.now = opts.now ?? Date.now;
  }

  private emit(event: ProgressEvent, required: boolean): void {
    const j = this.jsonl;
    if (!j) return;
    if (!this.started) {
      this.started = true;
      j.writer.write({ type: 'Start', version: PROGRESS_SCHEMA, command: j.command }, true);
    }
    j.writer.write(event, required);
  }

  private stepEvent(name: string, description: string, completed: boolean): void {
    const j = this.jsonl;
    if (!j) return;
    this.emit({
      type: 'ProgressSteps', task: j.command, description: `${j.command}: ${description}`, id: j.id,
      stepsCached: 0, steps: this.stepsDone, stepsTotal: j.steps.length,
      subtasks: [{ subtask: j.steps.includes(name) ? 'phase' : name, description, id: name, completed }],
    }, true);
  }

  /** A phase (a step of --progress-fd) ended: done, skipped or failed. Never dropped. */
  phaseEnd(name: string, result: 'done' | 'skipped' | 'failed'): void {
    // The last byte count of the phase, if the throttle held it back: a UI's bar ends where it ended.
    if (this.unsentBytes && this.jsonl) this.emit(bytesEvent(this.unsentBytes, this.jsonl.id), false);
    this.unsentBytes = undefined;
    if (result !== 'failed' && this.jsonl?.steps.includes(name)) this.stepsDone++;
    this.stepEvent(name, result === 'done' ? name : `${name} ${result}`, true);
  }

  /** The command's outcome: the last JSON line. Never dropped. */
  result(r: ProgressResult): void {
    this.emit({ type: 'Result', ...r }, true);
  }

  /** Lets go of the progress fd (after result()); waits a moment at most for a slow reader. */
  async close(): Promise<void> {
    await this.flush();
    await this.jsonl?.writer.close();
  }

  /** Phase changes always go out; in-phase updates at most once per interval. */
  update(p: ProgressSnapshot, force = false): void {
    const now = this.now();
    if (!force && p.unit === 'bytes' && this.jsonl) {
      if (now - this.lastJsonl >= JSONL_INTERVAL_MS) {
        this.lastJsonl = now;
        this.unsentBytes = undefined;
        this.emit(bytesEvent(p, this.jsonl.id), false);
      } else {
        this.unsentBytes = p;
      }
    }
    const text = formatProgress(p);
    if (text === this.lastText) return;
    if (!force && now - this.lastSent < this.intervalMs) return;
    this.lastSent = now;
    this.lastText = text;
    this.pending = this.pending.then(async () => { await this.notify({ STATUS: text }); }).catch(() => undefined);
    if (this.tty) {
      const bar = p.total ? `${progressBar(p.done ?? 0, p.total)} ` : '';
      process.stderr.write(`\r\x1b[2K${bar}${text}`);
    }
  }

  phase(name: string, detail?: string): void {
    // 'failed' is said by result(); every other phase, and the backoff wait, is a step event.
    if (name !== 'failed') this.stepEvent(name, detail ? `${name}: ${detail}` : name, false);
    this.update({ phase: name, ...(detail ? { detail } : {}) }, true);
  }

  /** The last STATUS= line of a run, past the throttle; it stays in `systemctl status` (RemainAfterExit). */
  async finalStatus(status: string): Promise<void> {
    this.lastText = status;
    this.pending = this.pending.then(async () => { await this.notify({ STATUS: status }); }).catch(() => undefined);
    await this.flush();
  }

  async flush(): Promise<void> {
    if (this.tty && this.lastText) process.stderr.write('\n');
    await this.pending;
  }
}
