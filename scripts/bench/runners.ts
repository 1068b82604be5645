// The contenders, each as "run once into a fresh directory on the staging tmpfs, return seconds":
//   a  node-image-pivot pull IMAGE --dest DIR (peak RSS by polling /proc/PID/status VmHWM)
//   b  skopeo copy docker://… oci:… then umoci unpack
//   c  podman pull into a throwaway --root on the staging tmpfs
//   d  the floor: the same blobs already on the tmpfs, gzip -dc | tar -x (zstd -dc) layer by layer
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface RunResult {
  seconds: number;
  /** Peak resident set of the measured process, KiB (a only), polled from VmHWM. */
  peakRssKiB?: number;
  /** Peak anonymous resident memory (RssAnon), KiB (a only): the process's own RAM. */
  peakAnonKiB?: number;
  /** user+system CPU seconds of the process and everything it waited for (GNU time). */
  cpuSeconds?: number;
  /** ru_maxrss of the largest process in the run, KiB (GNU time). */
  maxRssKiB?: number;
  /** Seconds of each step, when a contender has several. */
  parts?: Record<string, number>;
}

export interface Contender {
  id: string;
  label: string;
  /** Why it cannot run for this image, or undefined when it can. */
  unavailable?(image: BenchImage): string | undefined;
  run(image: BenchImage, dir: string): Promise<RunResult>;
}

export interface BenchImage {
  name: string;
  /** HOST/REPO:TAG on the loopback registry. */
  ref: string;
  compression: 'gzip' | 'zstd';
  /** Layer blobs, bottom first, already on the staging tmpfs (for the floor). */
  localLayers: string[];
}

export class CommandError extends Error {}

const GNU_TIME = '/usr/bin/time';

/**
 * VmHWM and RssAnon of the process GNU time runs (its only child), or of pid itself without GNU
 * time. RssAnon is what the process costs beyond the page cache: VmHWM also counts the pages of
 * the executable it touched, which on a live ISO are the RAM-backed file itself, not a copy.
 */
function memoryKiB(pid: number, wrapped: boolean): { hwm: number; anon: number } | undefined {
  try {
    const target = wrapped ? readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ')[0] : String(pid);
    if (!target) return undefined;
    const status = readFileSync(`/proc/${target}/status`, 'utf8');
    const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
    const anon = /RssAnon:\s+(\d+) kB/.exec(status);
    return hwm && anon ? { hwm: Number(hwm[1]), anon: Number(anon[1]) } : undefined;
  } catch {
    return undefined;
  }
}

/** Runs argv to completion; rejects with its stderr tail on a non-zero exit. */
export function exec(argv: string[], opts: { env?: NodeJS.ProcessEnv; pollRss?: boolean; cwd?: string } = {}): Promise<RunResult & { stdout: string }> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    // GNU time adds CPU seconds and ru_maxrss, steadier than wall time on a shared machine.
    const wrapped = existsSync(GNU_TIME);
    const timeDir = wrapped ? mkdtempSync(`${tmpdir()}/nip-time-`) : '';
    const full = wrapped ? [GNU_TIME, '-f', '%U %S %M', '-o', `${timeDir}/t`, ...argv] : argv;
    const child = spawn(full[0]!, full.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
    let stdout = '';
    let stderr = '';
    let peak = 0;
    let peakAnon = 0;
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr = (stderr + d.toString()).slice(-4000); });
    // VmHWM only grows, so the last reading before exit is the peak up to then; 10 ms apart.
    const timer = opts.pollRss && child.pid ? setInterval(() => {
      const m = memoryKiB(child.pid!, wrapped);
      if (m) {
        peak = Math.max(peak, m.hwm);
        peakAnon = Math.max(peakAnon, m.anon);
      }
    }, 10) : undefined;
    child.on('error', (err) => { if (timer) clearInterval(timer); reject(err); });
    child.on('exit', (code, signal) => {
      if (timer) clearInterval(timer);
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      let cpu: { cpuSeconds: number; maxRssKiB: number } | undefined;
      if (wrapped) {
        const t = readFileSync(`${timeDir}/t`, 'utf8').trim().split('\n').at(-1)!.split(' ').map(Number);
        rmSync(timeDir, { recursive: true, force: true });
        if (t.length === 3 && t.every((x) => Number.isFinite(x))) cpu = { cpuSeconds: t[0]! + t[1]!, maxRssKiB: t[2]! };
      }
      if (code !== 0) {
        reject(new CommandError(`${argv.slice(0, 3).join(' ')} … exited ${code ?? signal}: ${stderr.trim().split('\n').slice(-3).join(' | ')}`));
        return;
      }
      resolve({ seconds, stdout, ...(opts.pollRss ? { peakRssKiB: peak, peakAnonKiB: peakAnon } : {}), ...cpu });
    });
  });
}

/** a, or a variant (another build of the binary, for side-by-side baselines). */
export function pivotPull(id: string, binary: string, registriesConf: string): Contender {
  return {
    id,
    label: `${binary.split('/').slice(-2).join('/')} pull --dest`,
    async run(image, dir) {
      const r = await exec([binary, 'pull', image.ref, '--dest', join(dir, 'root'), '--registries-conf', registriesConf, '--json'], {
        pollRss: true,
        // As units/node-image-pivot.service runs it: MALLOC_ARENA_MAX=2 keeps glibc from holding
        // freed zlib buffers in per-thread arenas.
        env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn', MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? '2' },
      });
      const { stdout: _, ...rest } = r;
      return rest;
    },
  };
}

export function skopeoUmoci(): Contender {
  return {
    id: 'b',
    label: 'skopeo copy + umoci unpack',
    unavailable: (image) => (image.compression === 'zstd' ? "Debian's umoci 0.4.7 cannot read zstd layers" : undefined),
    async run(image, dir) {
      const env = { ...process.env, TMPDIR: dir };
      const copy = await exec(['skopeo', 'copy', '--quiet', '--src-tls-verify=false', `docker://${image.ref}`, `oci:${join(dir, 'oci')}:v1`], { env });
      const unpack = await exec(['umoci', 'unpack', '--image', `${join(dir, 'oci')}:v1`, join(dir, 'bundle')], { env });
      return {
        seconds: copy.seconds + unpack.seconds, parts: { skopeo: copy.seconds, umoci: unpack.seconds },
        ...(copy.cpuSeconds !== undefined && unpack.cpuSeconds !== undefined ? { cpuSeconds: copy.cpuSeconds + unpack.cpuSeconds, maxRssKiB: Math.max(copy.maxRssKiB ?? 0, unpack.maxRssKiB ?? 0) } : {}),
      };
    },
  };
}

export function podmanPull(): Contender {
  return {
    id: 'c',
    label: 'podman pull (overlay storage)',
    async run(image, dir) {
      const root = join(dir, 'storage');
      const run = join(dir, 'run');
      mkdirSync(run, { recursive: true });
      const r = await exec(['podman', '--root', root, '--runroot', run, '--storage-driver', 'overlay', '--cgroup-manager', 'cgroupfs',
        '--events-backend', 'none', 'pull', '--quiet', '--tls-verify=false', `docker://${image.ref}`], { env: { ...process.env, TMPDIR: dir } });
      const { stdout: _, ...rest } = r;
      return rest;
    },
  };
}

export function floor(): Contender {
  return {
    id: 'd',
    label: 'floor: local blobs, gzip -dc | tar -x',
    async run(image, dir) {
      const root = join(dir, 'root');
      mkdirSync(root);
      const tool = image.compression === 'zstd' ? 'zstd' : 'gzip';
      const script = `set -eo pipefail; for f in "$@"; do ${tool} -dc "$f" | tar -xf - -C "${root}"; done`;
      const { stdout: _, ...rest } = await exec(['bash', '-c', script, 'floor', ...image.localLayers]);
      return rest;
    },
  };
}

/** Removes a run's directory, unmounting anything podman left under it first. */
export function cleanRunDir(dir: string): void {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' ')[4]).filter((m): m is string => !!m && m.startsWith(`${dir}/`));
  // Best effort: a mount that is already gone is fine.
  for (const m of mounts.sort((x, y) => y.length - x.length)) spawnSync('umount', ['-l', m], { stdio: 'ignore' });
  rmSync(dir, { recursive: true, force: true });
}
