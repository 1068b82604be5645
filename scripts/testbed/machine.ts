// A systemd-nspawn machine booted from the cached rootfs (see rootfs.ts and
// ../shared/notes/testbed.md). One machine = one temp dir:
//   DIR/upper, DIR/work   the overlay's writable layer: everything the guest changes lands here
//   DIR/root              the overlay mount (lower = the shared extracted rootfs), nspawn's -D
//   DIR/results           bound at /results in the guest, for files a test wants back
//   DIR/agent/            the agent binary alone (a hard link of dist/node-image-pivot), bound
//                         read-only at /var/usrlocal/bin/node-image-pivot
//   DIR/console.log       nspawn's stdout/stderr: the guest console
// Nothing is mounted in the host namespace except DIR/root, and poweroff() unmounts it.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, openSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { REPO_ROOT, ensureRootfs } from './rootfs.ts';

export interface Bind {
  /** Path on the host (file or directory). */
  host: string;
  /** Where it appears in the guest. */
  guest: string;
  ro?: boolean;
}

export interface BootOptions {
  binds?: Bind[];
  /** Passed as systemd.unit= to the guest's PID 1, e.g. 'node-image-pivot.target'. */
  bootUnit?: string;
  /** Extra arguments for the guest's PID 1 (e.g. 'systemd.log_level=debug'). */
  kernelArgs?: string[];
  /**
   * Called with the guest's root (the mounted overlay) before boot. Whatever it writes lands in
   * this machine's upper layer only; the shared rootfs is never touched.
   */
  prepare?: (rootDir: string) => Promise<void> | void;
  /** Hostname and log label. Default: nip-<random>. */
  name?: string;
  /** The agent binary to bind at /var/usrlocal/bin/node-image-pivot; null for none. Default dist/node-image-pivot. */
  agentBinary?: string | null;
  /** How long to wait for the guest's manager to answer. Default 30 s. */
  bootTimeoutMs?: number;
}

export interface ExecOptions {
  /** Written to the command's stdin. */
  input?: string;
  env?: Record<string, string>;
  /** Default 120 s. */
  timeoutMs?: number;
  /** Extra systemd-run -p properties, e.g. 'NotifyAccess=all'. */
  properties?: string[];
  /**
   * Run with plain nsenter: the host's full capabilities, outside any guest unit. Default false:
   * the command runs as a transient unit under the guest's systemd, as the agent would.
   */
  direct?: boolean;
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface UnitState {
  activeState: string;
  subState: string;
  result: string;
}

/** glibc's SIGRTMIN is 34; systemd reads SIGRTMIN+4 as "power off". */
export const SIGRTMIN_PLUS_4 = 38;

const live = new Set<Machine>();
let exitHookInstalled = false;

/** Last-resort cleanup if the test process exits with machines still up (sync only). */
function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const m of live) m.killNow();
  });
}

async function freeLoopbackPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === 'object' && addr ? addr.port : 0));
    });
  });
}

function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function comm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

export function processAlive(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

/** Mount points at or below `dir` in the host namespace (from /proc/self/mountinfo). */
export function mountsUnder(dir: string): string[] {
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => unescape(l.split(' ')[4] ?? ''))
    .filter((mp) => mp === dir || mp.startsWith(`${dir}/`));
}

export class Machine {
  readonly name: string;
  readonly dir: string;
  readonly root: string;
  readonly upper: string;
  readonly resultsDir: string;
  readonly sshPort: number;
  nspawnPid = 0;
  leaderPid = 0;
  private child: ChildProcess | undefined;
  private exited: Promise<number | null> = Promise.resolve(null);
  private mounted = false;
  private running = false;
  /** The guest's PID namespace (/proc/PID/ns/pid link), to recognise its PID 1 safely. */
  private pidNs = '';

  constructor(name: string, dir: string, sshPort: number) {
    this.name = name;
    this.dir = dir;
    this.root = join(dir, 'root');
    this.upper = join(dir, 'upper');
    this.resultsDir = join(dir, 'results');
    this.sshPort = sshPort;
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** @internal used by bootMachine */
  async mountRoot(lower: string): Promise<void> {
    for (const d of [this.upper, join(this.dir, 'work'), this.root, this.resultsDir]) mkdirSync(d, { recursive: true });
    await execa('mount', ['-t', 'overlay', 'overlay', '-o',
      `lowerdir=${lower},upperdir=${this.upper},workdir=${join(this.dir, 'work')}`, this.root]);
    this.mounted = true;
  }

  /** @internal used by bootMachine */
  async start(args: string[], timeoutMs: number): Promise<void> {
    const log = openSync(join(this.dir, 'console.log'), 'a');
    try {
      this.child = spawn('systemd-nspawn', args, { stdio: ['ignore', log, log] });
    } finally {
      closeSync(log);
    }
    this.running = true;
    live.add(this);
    installExitHook();
    const child = this.child;
    this.exited = new Promise((resolve) => {
      child.once('exit', (code) => {
        this.running = false;
        resolve(code);
      });
      child.once('error', () => {
        this.running = false;
        resolve(null);
      });
    });
    this.nspawnPid = child.pid ?? 0;
    const deadline = Date.now() + timeoutMs;
    while (!this.leaderPid) {
      if (!this.running) throw new Error(`systemd-nspawn exited during boot: ${this.consoleTail()}`);
      if (Date.now() > deadline) throw new Error(`no guest PID 1 after ${timeoutMs} ms: ${this.consoleTail()}`);
      this.leaderPid = childrenOf(this.nspawnPid).find((p) => comm(p) === 'systemd') ?? 0;
      if (!this.leaderPid) await sleep(20);
    }
    this.pidNs = readlinkSync(`/proc/${this.leaderPid}/ns/pid`);
    // Ready when the guest's manager answers on its private socket (any state but "offline").
    for (;;) {
      const r = await this.exec(['systemctl', 'is-system-running'], { direct: true, timeoutMs: 5000 });
      const state = r.stdout.trim();
      if (state && state !== 'offline' && !/Failed to connect/.test(r.stderr)) break;
      if (!this.running) throw new Error(`the guest stopped during boot: ${this.consoleTail()}`);
      if (Date.now() > deadline) throw new Error(`the guest's systemd did not answer within ${timeoutMs} ms: ${this.consoleTail()}`);
      await sleep(50);
    }
  }

  consoleTail(lines = 20): string {
    try {
      return readFileSync(join(this.dir, 'console.log'), 'utf8').trim().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no console log)';
    }
  }

  /**
   * Runs `cmd` in the guest. By default as a transient unit under the guest's systemd
   * (`systemd-run --wait --pipe`), so it gets the guest's cgroup, environment and confinement;
   * the exit code is the command's. Never throws on a non-zero exit.
   */
  async exec(cmd: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    if (!this.running || !this.leaderPid) throw new Error(`machine ${this.name} is not running`);
    const argv = ['-t', String(this.leaderPid), '-a'];
    if (opts.direct) {
      argv.push('env', ...Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${v}`), ...cmd);
    } else {
      argv.push('systemd-run', '--wait', '--pipe', '--quiet', '--collect', '--service-type=exec');
      for (const [k, v] of Object.entries(opts.env ?? {})) argv.push(`--setenv=${k}=${v}`);
      for (const p of opts.properties ?? []) argv.push(`--property=${p}`);
      argv.push('--', ...cmd);
    }
    const r = await execa('nsenter', argv, {
      reject: false,
      timeout: opts.timeoutMs ?? 120_000,
      stripFinalNewline: false,
      ...(opts.input === undefined ? { stdin: 'ignore' as const } : { input: opts.input }),
    });
    if (r.timedOut) throw new Error(`exec ${JSON.stringify(cmd)} in ${this.name} timed out after ${opts.timeoutMs ?? 120_000} ms`);
    return { stdout: String(r.stdout), stderr: String(r.stderr), exitCode: r.exitCode ?? -1 };
  }

  async unitState(unit: string): Promise<UnitState> {
    const r = await this.exec(['systemctl', 'show', '-p', 'ActiveState,SubState,Result', unit], { direct: true, timeoutMs: 10_000 });
    const kv = Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    return { activeState: kv.ActiveState ?? '', subState: kv.SubState ?? '', result: kv.Result ?? '' };
  }

  /** Waits until `unit`'s ActiveState is one of `states` ('active', 'failed', 'inactive', ...). */
  async waitForUnit(unit: string, states: string | string[], timeoutMs = 60_000): Promise<UnitState> {
    const want = Array.isArray(states) ? states : [states];
    const deadline = Date.now() + timeoutMs;
    let last: UnitState = { activeState: '', subState: '', result: '' };
    while (Date.now() < deadline) {
      last = await this.unitState(unit);
      if (want.includes(last.activeState)) return last;
      if (!this.running) break;
      await sleep(100);
    }
    const tail = this.running ? (await this.journal(unit)).trim().split('\n').slice(-15).join('\n') : this.consoleTail();
    throw new Error(`${unit} did not reach ${want.join('|')} within ${timeoutMs} ms (now ${last.activeState}/${last.subState}, result ${last.result}):\n${tail}`);
  }

  /** Waits until `systemctl is-system-running` prints one of `states` ('running', 'degraded', ...). */
  async waitForSystemState(states: string | string[], timeoutMs = 60_000): Promise<string> {
    const want = Array.isArray(states) ? states : [states];
    const deadline = Date.now() + timeoutMs;
    let state = '';
    while (Date.now() < deadline && this.running) {
      state = (await this.exec(['systemctl', 'is-system-running'], { direct: true, timeoutMs: 10_000 })).stdout.trim();
      if (want.includes(state)) return state;
      await sleep(100);
    }
    const extra = this.running
      ? (await this.exec(['sh', '-c', 'systemctl list-jobs --no-pager; systemctl --failed --no-pager'], { direct: true })).stdout
      : this.consoleTail();
    throw new Error(`system state did not reach ${want.join('|')} within ${timeoutMs} ms (now ${state}):\n${extra}`);
  }

  /**
   * The guest journal as text (short-monotonic), optionally of one unit. While the machine runs it
   * is read inside (runtime + persistent journal); after poweroff, from the upper layer's
   * /var/log/journal, until dispose().
   */
  async journal(unit?: string): Promise<string> {
    const filter = unit ? ['-u', unit] : [];
    const common = ['--no-pager', '-q', '-o', 'short-monotonic', ...filter];
    if (this.running) {
      return (await this.exec(['journalctl', ...common], { direct: true, timeoutMs: 30_000 })).stdout;
    }
    const dir = join(this.upper, 'var/log/journal');
    if (!existsSync(dir)) return '';
    const r = await execa('journalctl', ['-D', dir, ...common], { reject: false });
    return String(r.stdout);
  }

  /**
   * Clean shutdown: SIGRTMIN+4 to the guest's PID 1 (systemd's "poweroff"), then SIGTERM and
   * finally SIGKILL to nspawn if it does not exit in time. Unmounts the root. Idempotent.
   * The upper layer, results and journal stay readable until dispose().
   */
  async poweroff(timeoutMs = 30_000): Promise<void> {
    if (this.running && this.leaderPid) {
      try {
        process.kill(this.leaderPid, SIGRTMIN_PLUS_4);
      } catch {
        // PID 1 is already gone; stop() reaps nspawn
      }
    }
    await this.stop(timeoutMs);
  }

  private async stop(timeoutMs: number): Promise<void> {
    // Unref'd timers: a pending timeout must not keep the test process alive after nspawn exits.
    const waitExit = (ms: number) => Promise.race([this.exited.then(() => true), sleep(ms, false, { ref: false })]);
    if (this.running && !(await waitExit(timeoutMs))) {
      this.signal(this.nspawnPid, 'SIGTERM');
      // nspawn answers SIGTERM with a halt, which a stuck stop job can block too. SIGKILL of the
      // guest's PID 1 takes its whole PID namespace down; killing only nspawn would orphan it.
      if (!(await waitExit(3000))) {
        this.killLeader();
        if (!(await waitExit(3000))) {
          this.signal(this.nspawnPid, 'SIGKILL');
          await waitExit(5000);
        }
      }
    }
    live.delete(this);
    await this.unmount();
  }

  private signal(pid: number, sig: NodeJS.Signals | number): void {
    try {
      if (pid > 0) process.kill(pid, sig);
    } catch {
      // already gone
    }
  }

  /** SIGKILL the guest's PID 1, but only if that PID is still ours (same PID namespace). */
  private killLeader(): void {
    if (!this.leaderPid || !this.pidNs) return;
    try {
      if (readlinkSync(`/proc/${this.leaderPid}/ns/pid`) === this.pidNs) process.kill(this.leaderPid, 'SIGKILL');
    } catch {
      // gone already
    }
  }

  private async unmount(): Promise<void> {
    if (!this.mounted) return;
    for (let i = 0; i < 50; i++) {
      const r = await execa('umount', [this.root], { reject: false });
      if (r.exitCode === 0 || !mountsUnder(this.root).length) {
        this.mounted = false;
        return;
      }
      await sleep(100);
    }
    await execa('umount', ['-l', this.root], { reject: false });
    this.mounted = false;
  }

  /** Powers off if needed and removes the machine's directory. */
  async dispose(): Promise<void> {
    await this.poweroff();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** @internal synchronous last resort for process exit. */
  killNow(): void {
    if (this.running) {
      this.killLeader();
      this.signal(this.nspawnPid, 'SIGKILL');
    }
    if (this.mounted) {
      try {
        execFileSync('umount', ['-l', this.root], { stdio: 'ignore' });
      } catch {
        // nothing more we can do at exit
      }
    }
  }
}

export function defaultAgentBinary(): string {
  return join(REPO_ROOT, 'dist', 'node-image-pivot');
}

function stageAgent(dir: string, binary: string): string {
  if (!existsSync(binary)) throw new Error(`agent binary ${binary} does not exist; run 'npm run build' first`);
  const stage = join(dir, 'agent');
  mkdirSync(stage);
  const dest = join(stage, 'node-image-pivot');
  try {
    linkSync(binary, dest); // same filesystem: free, and a rebuild (new inode) does not affect it
  } catch {
    copyFileSync(binary, dest);
  }
  return dest;
}

/** Boots a machine and resolves once the guest's systemd answers. Always poweroff()/dispose() it. */
export async function bootMachine(opts: BootOptions = {}): Promise<Machine> {
  const { tree } = await ensureRootfs();
  const name = opts.name ?? `nip-${Math.random().toString(36).slice(2, 8)}`;
  const dir = mkdtempSync(join(tmpdir(), `nip-machine-${name}-`));
  const m = new Machine(name, dir, await freeLoopbackPort());
  try {
    await m.mountRoot(tree);
    writeFileSync(join(m.root, 'etc/ssh/sshd_config.d/10-testbed.conf'),
      `ListenAddress 127.0.0.1:${m.sshPort}\nPermitRootLogin prohibit-password\n`);
    await opts.prepare?.(m.root);
    const args = ['-q', '-b', '-D', m.root, '-M', name, '--register=no', '--keep-unit', '--console=passive',
      `--bind=${m.resultsDir}:/results`];
    const agent = opts.agentBinary === undefined ? defaultAgentBinary() : opts.agentBinary;
    if (agent) args.push(`--bind-ro=${stageAgent(dir, agent)}:/var/usrlocal/bin/node-image-pivot`);
    for (const b of opts.binds ?? []) args.push(`${b.ro ? '--bind-ro' : '--bind'}=${b.host}:${b.guest}`);
    if (opts.bootUnit) args.push(`systemd.unit=${opts.bootUnit}`);
    args.push(...(opts.kernelArgs ?? []));
    await m.start(args, opts.bootTimeoutMs ?? 30_000);
    return m;
  } catch (err) {
    await m.dispose().catch(() => undefined);
    throw err;
  }
}
