// --progress-fd through the real CLI: the Result line of a failing run, the console message of a
// config error, and a reader that closes before the run writes (EPIPE): one log line, the run's
// own exit code, no SIGPIPE.
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { MAIN } from './faults/cli.ts';
import { startRegistry, type RunningRegistry } from './helpers/registry.ts';
import { buildOciLayout, gzip, OCI_LAYER_GZIP, pushLayout, simpleTar, type BuiltImage } from './helpers/oci-image.ts';
import { insecureConf } from './registry/util.ts';

let dir: string;
beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'nip-progress-cli-')); });
afterEach(() => { rmSync(dir, { recursive: true, force: true }); });

interface Ran { code: number | null; signal: string | null; stderr: string; progress: string }

/** The CLI with a pipe as fd 3; `closeReader` shuts our end before the CLI writes anything. */
function cli(args: string[], opts: { closeReader?: boolean } = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, ...args], {
      env: { ...process.env, NODE_IMAGE_PIVOT_ISSUE_DIR: join(dir, 'issue.d'), NODE_IMAGE_PIVOT_LOCK_FILE: join(dir, 'pivot.lock') },
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    });
    const fd3 = child.stdio[3] as Readable;
    let progress = '';
    let stderr = '';
    if (opts.closeReader) fd3.destroy();
    else fd3.on('data', (d: Buffer) => { progress += d.toString(); });
    child.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stderr, progress }));
  });
}

const events = (text: string): Array<Record<string, unknown>> => text.trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);

describe('--progress-fd through the CLI', () => {
  it('run with a bad config: Start, then Result failed with the one line and fix; the console message is written', async () => {
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ image: 'quay.io/x/y:latest', concurrency: 'many' }));
    const r = await cli(['run', '--config', config, '--progress-fd', '3']);
    expect(r.code).toBe(2);
    const ev = events(r.progress);
    expect(ev.map((e) => e.type)).toEqual(['Start', 'Result']);
    expect(ev[1]).toMatchObject({ result: 'failed', exitCode: 2, error: { kind: 'config', field: 'concurrency' } });
    expect((ev[1]!.error as { line: string }).line).toMatch(/^config: .*Fix: /);
    expect(readFileSync(join(dir, 'issue.d', 'node-image-pivot.issue'), 'utf8')).toContain((ev[1]!.error as { line: string }).line);
  });

  it('pull into an existing directory: the step fails and the Result says why; nothing is written to the directory', async () => {
    const dest = join(dir, 'dest');
    mkdirSync(dest);
    const r = await cli(['pull', `registry.invalid/x/y@sha256:${'a'.repeat(64)}`, '--dest', dest, '--progress-fd', '3']);
    expect(r.code).toBe(2);
    const ev = events(r.progress);
    expect(ev.map((e) => e.type)).toEqual(['Start', 'ProgressSteps', 'ProgressSteps', 'Result']);
    expect(ev[0]).toMatchObject({ command: 'pull' });
    expect(ev[2]).toMatchObject({ subtasks: [{ id: 'pull', description: 'pull failed', completed: true }] });
    expect(ev[3]).toMatchObject({ result: 'failed', exitCode: 2, error: { kind: 'usage', path: dest } });
  });

  it('a reader that closed: one log line, the exit code of the run itself, no SIGPIPE', async () => {
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ image: 'quay.io/x/y:latest', concurrency: 'many' }));
    const r = await cli(['run', '--config', config, '--progress-fd', '3'], { closeReader: true });
    expect({ code: r.code, signal: r.signal }).toEqual({ code: 2, signal: null });
    expect(r.stderr.split('\n').filter((l) => l.includes('progress reader on fd 3'))).toHaveLength(1);
  });

  it('refuses fds 0-2 and one the parent did not pass (fd 9 is then one of Node\'s own) with exit 2', async () => {
    expect((await cli(['run', '--progress-fd', '1'])).code).toBe(2);
    expect((await cli(['pull', 'x/y:z', '--dest', join(dir, 'd'), '--progress-fd', '9'])).code).toBe(2);
  });
});

describe('--progress-fd of pull --oci-layout, against a real registry', () => {
  let reg: RunningRegistry;
  let img: BuiltImage;
  let conf: string;
  let regDir: string;
  beforeAll(async () => {
    regDir = mkdtempSync(join(tmpdir(), 'nip-progress-layout-'));
    reg = await startRegistry();
    conf = insecureConf(regDir, [reg.host]);
    img = await buildOciLayout(join(regDir, 'src'), {
      tag: 'v1',
      layers: [
        { data: await gzip(await simpleTar({ 'usr/': '', 'usr/a': 'a'.repeat(100_000) })), mediaType: OCI_LAYER_GZIP },
        { data: await gzip(await simpleTar({ 'usr/': '', 'usr/b': 'b'.repeat(50_000) })), mediaType: OCI_LAYER_GZIP },
      ],
    });
    await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/layout');
  });
  afterAll(async () => {
    await reg?.stop();
    rmSync(regDir, { recursive: true, force: true });
  });

  it('carries byte progress: the image\'s layer bytes as total, each layer a subtask that completes', async () => {
    const r = await cli(['pull', `${reg.host}/ns/layout:v1`, '--oci-layout', join(dir, 'layout'), '--registries-conf', conf, '--progress-fd', '3']);
    expect(r.code).toBe(0);
    const ev = events(r.progress);
    const bytes = ev.filter((e) => e.type === 'ProgressBytes') as Array<{ bytes: number; bytesTotal: number; subtasks: Array<{ id: string; bytes: number; bytesTotal: number }> }>;
    const total = img.layers.reduce((n, l) => n + l.size, 0);
    expect(bytes.length).toBeGreaterThan(0);
    for (const b of bytes) expect(b.bytesTotal).toBe(total);
    // The phase's last count always goes out (phaseEnd): everything fetched, every layer complete.
    const last = bytes.at(-1)!;
    expect(last.bytes).toBe(total);
    expect(last.subtasks.map((s) => s.id)).toEqual(img.layers.map((l) => l.digest));
    for (const s of last.subtasks) expect(s.bytes).toBe(s.bytesTotal);
    expect(ev.at(-1)).toMatchObject({ type: 'Result', result: 'done', exitCode: 0, digest: img.manifestDigest });
  });
});
