// --progress-fd: the JSON lines' shape and throttle, and what a real pipe's reader can do to the
// writer: stop reading midway (the pipe fills) or close (EPIPE). Neither may block or fail a run.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Progress, JSONL_INTERVAL_MS, layerTracker, pullProgress } from '../src/progress.ts';
import { JsonlProgressWriter, MAX_QUEUED_BYTES, PROGRESS_SCHEMA, parseProgressFd, type ProgressEvent } from '../src/progress-jsonl.ts';
import { createLogger, setLogger } from '../src/log.ts';
import { thrown } from './helpers/thrown.ts';
import { waitFor } from './helpers/wait.ts';

let dir: string;
let logs: string[];
const children: ChildProcess[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'nip-progress-'));
  logs = [];
  setLogger(createLogger({ sink: (l) => logs.push(l), pretty: false }));
});
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

function lines(path: string): ProgressEvent[] {
  return readFileSync(path, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as ProgressEvent);
}

/** A reader on the far end of a FIFO running `script` with the FIFO as stdin; returns our write fd. */
function fifoWithReader(script: string): { fd: number; reader: ChildProcess; exited: Promise<number | null> } {
  const fifo = join(dir, 'progress.fifo');
  execFileSync('mkfifo', [fifo]);
  const reader = spawn('sh', ['-c', `exec < "$FIFO"; ${script}`], { env: { ...process.env, FIFO: fifo, DIR: dir }, stdio: 'ignore' });
  children.push(reader);
  const exited = new Promise<number | null>((resolve) => reader.on('exit', resolve));
  // Blocks until the reader has the FIFO open; the reader is another process, so it gets there.
  const fd = openSync(fifo, 'w');
  return { fd, reader, exited };
}

function runLike(progress: Progress, layers = 3, updatesPerLayer = 2000): void {
  const onProgress = pullProgress(progress);
  progress.phase('preflight');
  progress.phaseEnd('preflight', 'done');
  progress.phase('pull');
  for (let l = 1; l <= layers; l++) {
    for (let i = 1; i <= updatesPerLayer; i++) {
      onProgress({ layer: l, layers, bytesIn: (l - 1) * 1000 + i / 2, bytesTotal: layers * 1000, digest: `sha256:${String(l).repeat(64)}`, size: 1000, layerBytesIn: i / 2 });
    }
  }
  progress.phaseEnd('pull', 'done');
}

describe('progress JSON lines', () => {
  it('refuses fds 0-2 and non-numbers, and a closed fd, as usage errors', () => {
    for (const bad of ['0', '1', '2', '-1', 'x', '3.5', '']) expect(thrown(() => parseProgressFd(bad))).toMatchObject({ kind: 'usage', field: '--progress-fd' });
    expect(parseProgressFd('7')).toBe(7);
    expect(thrown(() => new JsonlProgressWriter(999))).toMatchObject({ kind: 'usage', field: '--progress-fd' });
    // One of Node's own (epoll, eventfd): taking it would abort the process.
    const own = readdirSync('/proc/self/fd').map(Number).find((fd) => { try { return readlinkSync(`/proc/self/fd/${fd}`).startsWith('anon_inode:'); } catch { return false; } });
    expect(own).toBeDefined();
    expect((thrown(() => new JsonlProgressWriter(own!)) as Error).message).toMatch(/one of Node's own descriptors/);
  });

  it('writes Start, steps for the phases, throttled byte progress with per-layer subtasks, and the result', async () => {
    const out = join(dir, 'events.jsonl');
    const writer = new JsonlProgressWriter(openSync(out, 'w'));
    let clock = 1_000_000;
    const progress = new Progress({ notify: async () => undefined, tty: false, now: () => clock, jsonl: { writer, command: 'run', steps: ['preflight', 'pull', 'mount'], id: 'run' } });
    const onProgress = pullProgress(progress);
    progress.phase('preflight');
    progress.phaseEnd('preflight', 'done');
    progress.phase('pull');
    // 10 updates in one clock tick: one line; then the clock moves past the interval: one more.
    for (let i = 1; i <= 10; i++) onProgress({ layer: 1, layers: 2, bytesIn: i, bytesTotal: 300, digest: 'sha256:a', size: 100, layerBytesIn: i });
    clock += JSONL_INTERVAL_MS;
    onProgress({ layer: 2, layers: 2, bytesIn: 150, bytesTotal: 300, digest: 'sha256:b', size: 200, layerBytesIn: 50 });
    onProgress({ layer: 2, layers: 2, bytesIn: 300, bytesTotal: 300, digest: 'sha256:b', size: 200, layerBytesIn: 200 });
    progress.phaseEnd('pull', 'done');
    progress.phaseEnd('mount', 'skipped');
    progress.phase('failed', 'the one line');
    progress.result({ result: 'done', exitCode: 0, digest: 'sha256:d' });
    await progress.close();

    const ev = lines(out);
    expect(ev.map((e) => e.type)).toEqual(['Start', 'ProgressSteps', 'ProgressSteps', 'ProgressSteps', 'ProgressBytes', 'ProgressBytes', 'ProgressBytes', 'ProgressSteps', 'ProgressSteps', 'Result']);
    expect(ev[0]).toEqual({ type: 'Start', version: PROGRESS_SCHEMA, command: 'run' });
    expect(ev[1]).toMatchObject({ type: 'ProgressSteps', steps: 0, stepsTotal: 3, subtasks: [{ subtask: 'phase', id: 'preflight', completed: false }] });
    expect(ev[2]).toMatchObject({ steps: 1, subtasks: [{ id: 'preflight', completed: true }] });
    expect(ev[4]).toMatchObject({ type: 'ProgressBytes', task: 'pull', bytes: 1, bytesTotal: 300, steps: 0, stepsTotal: 2, subtasks: [{ subtask: 'layer', id: 'sha256:a', bytes: 1, bytesTotal: 100 }] });
    expect(ev[5]).toMatchObject({ bytes: 150, steps: 1, subtasks: [{ id: 'sha256:a', bytes: 100, bytesTotal: 100 }, { id: 'sha256:b', bytes: 50, bytesTotal: 200 }] });
    // The throttled last update still goes out when the phase ends.
    expect(ev[6]).toMatchObject({ bytes: 300, steps: 2 });
    expect(ev[7]).toMatchObject({ steps: 2, subtasks: [{ id: 'pull', completed: true }] });
    expect(ev[8]).toMatchObject({ steps: 3, subtasks: [{ id: 'mount', description: 'mount skipped', completed: true }] });
    expect(ev[9]).toEqual({ type: 'Result', result: 'done', exitCode: 0, digest: 'sha256:d' });
  });

  it('the wait between attempts is a step event of its own; it does not count as a phase', async () => {
    const out = join(dir, 'backoff.jsonl');
    const progress = new Progress({ notify: async () => undefined, tty: false, jsonl: { writer: new JsonlProgressWriter(openSync(out, 'w')), command: 'run', steps: ['preflight'], id: 'run' } });
    progress.phase('preflight');
    progress.phaseEnd('preflight', 'done');
    progress.phase('backoff', 'attempt 3, waiting 15 s');
    await progress.close();
    expect(lines(out).at(-1)).toMatchObject({ type: 'ProgressSteps', steps: 1, stepsTotal: 1, subtasks: [{ subtask: 'backoff', id: 'backoff', description: 'backoff: attempt 3, waiting 15 s', completed: false }] });
  });

  it('tracks layers in order: earlier layers complete, later ones not yet listed', () => {
    const track = layerTracker();
    track({ layer: 1, digest: 'a', size: 10, layerBytesIn: 3 });
    expect(track({ layer: 2, digest: 'b', size: 5, layerBytesIn: 9 })).toEqual([
      { digest: 'a', bytes: 10, bytesTotal: 10 }, { digest: 'b', bytes: 5, bytesTotal: 5 },
    ]);
  });

  it('a reader that stops reading midway: writes never block, lossy events are dropped, required ones kept up to the bound', async () => {
    // Reads 4 KiB, says so, then holds the pipe open without reading.
    const { fd } = fifoWithReader('head -c 4096 > "$DIR/got"; touch "$DIR/stopped"; exec sleep 600');
    const writer = new JsonlProgressWriter(fd);
    const progress = new Progress({ notify: async () => undefined, tty: false, now: (() => { let t = 0; return () => (t += JSONL_INTERVAL_MS); })(), jsonl: { writer, command: 'run', steps: ['preflight', 'pull'], id: 'run' } });
    runLike(progress, 3, 50);
    await waitFor(() => existsSync(join(dir, 'stopped')), 'the reader to stop', { timeoutMs: 20_000, intervalMs: 20 });
    // Far more than the pipe (64 KiB) and the queue bound take, all while the reader sleeps.
    runLike(progress, 40, 1000);
    expect(writer.stats.droppedLossy).toBeGreaterThan(0);
    expect(writer.stats.droppedRequired).toBe(0);
    // Required events beyond any real run's count: the queue stays bounded, with one log line.
    for (let i = 0; i < 5000; i++) progress.phase('pull', `note ${i}`);
    progress.result({ result: 'done', exitCode: 0 });
    expect(writer.stats.droppedRequired).toBeGreaterThan(0);
    expect(writer.stats.counts.Start).toBe(1);
    const queued = (writer as unknown as { socket: { writableLength: number } }).socket.writableLength;
    expect(queued).toBeLessThanOrEqual(MAX_QUEUED_BYTES);
    expect(logs.filter((l) => /is not reading/.test(l))).toHaveLength(1);
    // close() gives up on the reader instead of waiting for it.
    await progress.close();
    const got = readFileSync(join(dir, 'got'), 'utf8');
    expect(got.length).toBe(4096);
    expect(JSON.parse(got.split('\n')[0]!)).toMatchObject({ type: 'Start', version: PROGRESS_SCHEMA });
  });

  it('a reader that closes: one log line (EPIPE), no error, and no more writes', async () => {
    const { fd, exited } = fifoWithReader('head -c 100 > "$DIR/got"');
    const writer = new JsonlProgressWriter(fd);
    const progress = new Progress({ notify: async () => undefined, tty: false, jsonl: { writer, command: 'pull', steps: ['pull'], id: 'pull' } });
    // Start and one step event are more than 100 bytes: the reader takes 100 and exits, and then
    // nobody holds the read end.
    progress.phase('pull');
    await exited;
    for (let i = 0; i < 50; i++) progress.phase('pull', `after close ${i}`);
    await waitFor(() => logs.some((l) => l.includes(`fd ${fd} went away (EPIPE)`)), 'the EPIPE log line', { timeoutMs: 20_000, intervalMs: 20 });
    const writtenAtStop = writer.stats.written;
    for (let i = 0; i < 50; i++) progress.phase('pull', `after stop ${i}`);
    progress.result({ result: 'failed', exitCode: 3, error: { kind: 'network', message: 'm', fix: 'f', line: 'network: m. Fix: f' } });
    await progress.close();
    expect(writer.stats.written).toBe(writtenAtStop);
    expect(logs.filter((l) => l.includes(`fd ${fd} went away (EPIPE)`))).toHaveLength(1);
  });
});
