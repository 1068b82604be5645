// Progress for the two audiences that watch a pivot: `systemctl status node-image-pivot` (sd_notify
// STATUS=) and a person at a terminal (a one-line bar on stderr). Throttled so that a fast unpack
// does not turn into thousands of notify calls.
import { sdNotify, type NotifyFields } from './systemd/notify.ts';

export interface ProgressSnapshot {
  phase: string;
  detail?: string;
  done?: number;
  total?: number;
  unit?: 'bytes' | 'entries' | 'actions';
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

export class Progress {
  private lastSent = 0;
  private lastText = '';
  private pending: Promise<void> = Promise.resolve();
  private readonly tty: boolean;
  private readonly notify: NotifyFn;
  private readonly intervalMs: number;

  constructor(opts: { notify?: NotifyFn; tty?: boolean; intervalMs?: number } = {}) {
    this.notify = opts.notify ?? ((f) => sdNotify(f));
    this.tty = opts.tty ?? process.stderr.isTTY === true;
    this.intervalMs = opts.intervalMs ?? 1000;
  }

  /** Phase changes always go out; in-phase updates at most once per interval. */
  update(p: ProgressSnapshot, force = false): void {
    const text = formatProgress(p);
    const now = Date.now();
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
    this.update({ phase: name, ...(detail ? { detail } : {}) }, true);
  }

  async ready(status: string): Promise<void> {
    this.lastText = status;
    this.pending = this.pending.then(async () => { await this.notify({ READY: '1', STATUS: status }); }).catch(() => undefined);
    await this.flush();
  }

  async flush(): Promise<void> {
    if (this.tty && this.lastText) process.stderr.write('\n');
    await this.pending;
  }
}
