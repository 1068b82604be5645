// A qemu VM booted from the cached live image (image.ts) plus a per-VM provisioning layer
// (provision.ts). One VM = one temp dir:
//   DIR/provision.squashfs   the layer, /dev/vdb in the guest (the image is /dev/vda, read-only)
//   DIR/serial.log           the guest console (kernel, initramfs, systemd status)
//   DIR/qemu.log             qemu's own stderr; DIR/qemu.pid its pid
//   DIR/agent.sock           the virtio-serial chardev of the guest agent
//   DIR/journal.txt, DIR/audit.log   collected through the agent just before power-off
// The guest's root lives in its RAM: nothing it writes survives the VM.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { AgentChannel, shellQuote } from './agent-channel.ts';
import { ensureVmImage } from './image.ts';
import { buildProvisionLayer, type Provision } from './provision.ts';
import type { ExecResult, UnitState } from '../machine.ts';

/** The guest reaches forwarded host services at this address (qemu's guestfwd); no DNS. */
export const GUEST_FORWARD_HOST = '10.0.2.100';

export interface Forward {
  /** Port on GUEST_FORWARD_HOST inside the guest. */
  guestPort: number;
  /** Port on the host's 127.0.0.1. */
  hostPort: number;
}

export interface VmBootOptions {
  name?: string;
  /** Guest RAM. Default 2048. */
  memoryMiB?: number;
  /** Appended to the kernel command line (e.g. 'systemd.unit=node-image-pivot.target'). */
  kernelArgs?: string[];
  /** One guestfwd per loopback service, e.g. the registry: { guestPort: 5000, hostPort: reg.port }. */
  forwards?: Forward[];
  provision?: Provision;
  /** Let a guest reboot restart the VM in place (default: -no-reboot, a reboot ends qemu). */
  allowReboot?: boolean;
  /** Until the guest agent answers. Default 10 min: TCG on a loaded 2-core host is slow. */
  bootTimeoutMs?: number;
}

export interface VmExecOptions {
  input?: string;
  env?: Record<string, string>;
  /** Default 300 s. */
  timeoutMs?: number;
  /** Extra systemd-run -p properties. */
  properties?: string[];
  /** Run in the agent's own process (its domain, no unit) instead of a transient unit. */
  direct?: boolean;
}

export type { ExecResult, UnitState };

const live = new Set<Vm>();
let exitHookInstalled = false;

/** Kills every VM this process still runs (sync; for process exit and test teardown). */
export function killAllVms(): void {
  for (const vm of live) vm.killNow();
}

/** Powers off and removes every VM this process still runs. */
export async function disposeAllVms(): Promise<void> {
  await Promise.all([...live].map((vm) => vm.dispose()));
}

const POLL_MS = 500;

export class Vm {
  readonly name: string;
  readonly dir: string;
  readonly serialLog: string;
  qemuPid = 0;
  /** The boot id the agent last reported. */
  bootId = '';
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private running = false;
  private agent = new AgentChannel();
  private collected = false;

  constructor(name: string, dir: string) {
    this.name = name;
    this.dir = dir;
    this.serialLog = join(dir, 'serial.log');
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** @internal used by bootVm */
  async start(args: string[], timeoutMs: number): Promise<void> {
    const err = openSync(join(this.dir, 'qemu.log'), 'a');
    try {
      this.child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', err] });
    } finally {
      closeSync(err);
    }
    this.running = true;
    live.add(this);
    if (!exitHookInstalled) {
      exitHookInstalled = true;
      process.on('exit', killAllVms);
    }
    const child = this.child;
    this.qemuPid = child.pid ?? 0;
    this.exited = new Promise((resolve) => {
      child.once('exit', () => {
        this.running = false;
        resolve();
      });
      child.once('error', () => {
        this.running = false;
        resolve();
      });
    });
    await this.agent.connect(join(this.dir, 'agent.sock'), () => this.running, 60_000);
    this.bootId = await this.waitForAgent(timeoutMs);
  }

  /** Asks the agent for the boot id until it answers (the request waits in the socket meanwhile). */
  private async waitForAgent(timeoutMs: number, notBootId = ''): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const left = deadline - Date.now();
      if (left <= 0 || !this.running) break;
      try {
        const r = await this.agent.run('cat /proc/sys/kernel/random/boot_id', { timeoutMs: Math.min(left, 30_000) });
        const id = r.stdout.trim();
        if (r.exitCode === 0 && id && id !== notBootId) return id;
        await sleep(POLL_MS);
      } catch {
        // not up yet (or rebooting): ask again
      }
    }
    throw new Error(`guest agent of ${this.name} did not answer within ${timeoutMs} ms${this.running ? '' : ' (qemu exited)'}:\n${this.serialTail()}`);
  }

  serialTail(lines = 30): string {
    try {
      return readFileSync(this.serialLog, 'utf8').trim().split('\n').slice(-lines).join('\n');
    } catch {
      return '(no serial log)';
    }
  }

  /**
   * Runs `cmd` in the guest, by default as a transient unit under the guest's systemd
   * (`systemd-run --wait`, stdio files opened by PID 1), as a service would run. Never throws on
   * a non-zero exit.
   * Its stdio are files the agent (initrc_t) created: a command that enters a confined domain
   * may be denied them, which shows as an AVC naming the agent's files, not the command's.
   */
  async exec(cmd: string[], opts: VmExecOptions = {}): Promise<ExecResult> {
    if (!this.running) throw new Error(`VM ${this.name} is not running`);
    const env = Object.entries(opts.env ?? {});
    let script: string;
    if (opts.direct) {
      script = `exec ${shellQuote(env.length ? ['env', ...env.map(([k, v]) => `${k}=${v}`), ...cmd] : cmd)}`;
    } else {
      // Not --pipe: it hands the agent's fds to PID 1 through dbus-daemon, which the policy
      // denies reading them. PID 1 opens the request's files itself instead.
      const argv = ['systemd-run', '--wait', '--quiet', '--collect', '--service-type=exec',
        ...env.map(([k, v]) => `--setenv=${k}=${v}`), ...(opts.properties ?? []).map((p) => `--property=${p}`), '--', ...cmd];
      const stdio = ['StandardInput=file:', 'StandardOutput=append:', 'StandardError=append:']
        .map((p, i) => `--property=${p}"$NIP_REQ"/${['stdin', 'stdout', 'stderr'][i]}`).join(' ');
      script = `exec ${shellQuote(argv.slice(0, 5))} ${stdio} ${shellQuote(argv.slice(5))}`;
    }
    const timeoutMs = opts.timeoutMs ?? 300_000;
    try {
      return await this.agent.run(script, { input: opts.input, timeoutMs });
    } catch (err) {
      throw new Error(`exec ${JSON.stringify(cmd)} in ${this.name}: ${(err as Error).message}\n${this.serialTail(10)}`);
    }
  }

  /** Runs a shell script in the agent's process (direct). */
  async sh(script: string, opts: { input?: string; timeoutMs?: number } = {}): Promise<ExecResult> {
    return this.exec(['bash', '-c', script], { ...opts, direct: true });
  }

  async unitState(unit: string): Promise<UnitState> {
    const r = await this.exec(['systemctl', 'show', '-p', 'ActiveState,SubState,Result', unit], { direct: true, timeoutMs: 60_000 });
    const kv = Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
    return { activeState: kv.ActiveState ?? '', subState: kv.SubState ?? '', result: kv.Result ?? '' };
  }

  async waitForUnit(unit: string, states: string | string[], timeoutMs = 300_000): Promise<UnitState> {
    const want = Array.isArray(states) ? states : [states];
    const deadline = Date.now() + timeoutMs;
    let last: UnitState = { activeState: '', subState: '', result: '' };
    while (Date.now() < deadline && this.running) {
      last = await this.unitState(unit);
      if (want.includes(last.activeState)) return last;
      await sleep(POLL_MS);
    }
    const tail = this.running ? (await this.journal(unit)).trim().split('\n').slice(-20).join('\n') : this.serialTail();
    throw new Error(`${unit} did not reach ${want.join('|')} within ${timeoutMs} ms (now ${last.activeState}/${last.subState}, result ${last.result}):\n${tail}`);
  }

  async waitForSystemState(states: string | string[], timeoutMs = 300_000): Promise<string> {
    const want = Array.isArray(states) ? states : [states];
    const deadline = Date.now() + timeoutMs;
    let state = '';
    while (Date.now() < deadline && this.running) {
      state = (await this.exec(['systemctl', 'is-system-running'], { direct: true, timeoutMs: 60_000 })).stdout.trim();
      if (want.includes(state)) return state;
      await sleep(POLL_MS);
    }
    const extra = this.running ? (await this.sh('systemctl list-jobs --no-pager; systemctl --failed --no-pager')).stdout : this.serialTail();
    throw new Error(`system state did not reach ${want.join('|')} within ${timeoutMs} ms (now ${state}):\n${extra}`);
  }

  /** The guest journal (short-monotonic), optionally of one unit. After poweroff: the copy taken before it. */
  async journal(unit?: string): Promise<string> {
    if (this.running) {
      return (await this.exec(['journalctl', '--no-pager', '-q', '-o', 'short-monotonic', ...(unit ? ['-u', unit] : [])], { direct: true })).stdout;
    }
    const file = join(this.dir, 'journal.txt');
    const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
    if (!unit) return text;
    // The saved copy is the whole journal in `-o short-monotonic` form: filter on the unit's name.
    const stem = unit.replace(/\.service$/, '');
    return text.split('\n').filter((l) => l.includes(` ${stem}[`) || l.includes(unit)).join('\n');
  }

  /**
   * SELinux denials: the AVC/SELINUX_ERR records of the audit log, plus kernel `avc:` lines from
   * the journal (those logged before auditd started). After poweroff: the copy taken before it.
   */
  async audit(): Promise<string[]> {
    const text = this.running ? (await this.sh(AUDIT_SCRIPT)).stdout : readText(join(this.dir, 'audit.log'));
    return text.split('\n').filter((l) => /avc:|type=AVC|type=SELINUX_ERR|type=USER_AVC/.test(l));
  }

  /** Saves the journal and audit records to DIR (what journal()/audit() return after power-off). */
  async collect(): Promise<void> {
    if (!this.running) return;
    writeFileSync(join(this.dir, 'journal.txt'), await this.journal());
    writeFileSync(join(this.dir, 'audit.log'), (await this.sh(AUDIT_SCRIPT)).stdout);
    this.collected = true;
  }

  /** Reboots the guest in place (needs allowReboot) and waits until the agent of the new boot answers. */
  async reboot(timeoutMs = 600_000): Promise<void> {
    const before = this.bootId;
    // The reply may never come: the shutdown can stop the agent before it writes it.
    const sent = this.agent.run('exec systemctl reboot --no-block', { timeoutMs: 60_000 }).catch(() => undefined);
    this.bootId = await this.waitForAgent(timeoutMs, before);
    await sent;
  }

  /** Collects journal and audit, `systemctl poweroff`, then SIGTERM/SIGKILL of qemu by PID. Idempotent. */
  async poweroff(timeoutMs = 180_000): Promise<void> {
    if (this.running) {
      try {
        if (!this.collected) await this.collect();
        // Not awaited: the shutdown may stop the agent before it answers; qemu's exit is the answer.
        void this.agent.run('exec systemctl poweroff --no-block', { timeoutMs: 60_000 }).catch(() => undefined);
      } catch {
        // the agent is gone: qemu gets killed below
      }
    }
    const waitExit = (ms: number) => Promise.race([this.exited.then(() => true), sleep(ms, false, { ref: false })]);
    if (this.running && !(await waitExit(timeoutMs))) {
      this.signal('SIGTERM');
      if (!(await waitExit(5000))) {
        this.signal('SIGKILL');
        await waitExit(5000);
      }
    }
    this.agent.close();
    live.delete(this);
  }

  private signal(sig: NodeJS.Signals): void {
    try {
      if (this.qemuPid > 0 && this.running) process.kill(this.qemuPid, sig);
    } catch {
      // already gone
    }
  }

  async dispose(): Promise<void> {
    await this.poweroff();
    if (!process.env.NODE_IMAGE_PIVOT_KEEP_VM) rmSync(this.dir, { recursive: true, force: true });
  }

  /** @internal synchronous last resort. */
  killNow(): void {
    this.signal('SIGKILL');
    live.delete(this);
  }
}

const AUDIT_SCRIPT = "grep -h -E 'type=(AVC|SELINUX_ERR|USER_AVC)' /var/log/audit/audit.log* 2>/dev/null; journalctl -k -q --no-pager -o short-monotonic -g 'avc:' 2>/dev/null; true";

function readText(path: string): string {
  return existsSync(path) ? readFileSync(path, 'utf8') : '';
}

export const BASE_KERNEL_ARGS = ['console=ttyS0', 'boot=nip-live', 'root=/dev/vda', 'security=selinux', 'selinux=1', 'enforcing=1',
  'quiet', 'systemd.show_status=1', 'panic=-1'];

/** The base line with `opts` appended; a `key=value` of `opts` replaces the base's `key=` (e.g. enforcing=0). */
export function kernelCommandLine(extra: readonly string[] = []): string {
  const keyOf = (a: string) => (a.includes('=') ? a.slice(0, a.indexOf('=') + 1) : '');
  const overridden = new Set(extra.map(keyOf).filter(Boolean));
  return [...BASE_KERNEL_ARGS.filter((a) => !overridden.has(keyOf(a))), ...extra].join(' ');
}

/** Boots a VM and resolves once its guest agent answers. Always poweroff()/dispose() it. */
export async function bootVm(opts: VmBootOptions = {}): Promise<Vm> {
  const image = await ensureVmImage();
  const name = opts.name ?? `nip-vm-${Math.random().toString(36).slice(2, 8)}`;
  const dir = mkdtempSync(join(tmpdir(), `nip-vm-${name}-`));
  const vm = new Vm(name, dir);
  try {
    const layer = await buildProvisionLayer(dir, image.fileContexts, opts.provision);
    const fwd = (opts.forwards ?? []).map((f) => `,guestfwd=tcp:${GUEST_FORWARD_HOST}:${f.guestPort}-cmd:socat - TCP:127.0.0.1:${f.hostPort}`).join('');
    const args = [
      '-machine', 'q35', '-accel', 'tcg,thread=multi', '-cpu', 'max', '-smp', '2', '-m', String(opts.memoryMiB ?? 2048),
      '-nodefaults', '-display', 'none', '-serial', `file:${vm.serialLog}`, '-pidfile', join(dir, 'qemu.pid'),
      '-kernel', image.kernel, '-initrd', image.initrd, '-append', kernelCommandLine(opts.kernelArgs),
      '-drive', `file=${image.squashfs},if=virtio,format=raw,readonly=on`,
      '-drive', `file=${layer},if=virtio,format=raw,readonly=on`,
      '-netdev', `user,id=n0,restrict=on${fwd}`, '-device', 'virtio-net-pci,netdev=n0,romfile=',
      '-chardev', `socket,id=agent,path=${join(dir, 'agent.sock')},server=on,wait=off`,
      '-device', 'virtio-serial-pci', '-device', 'virtserialport,chardev=agent,name=org.nip.agent',
      ...(opts.allowReboot ? [] : ['-no-reboot']),
    ];
    writeFileSync(join(dir, 'qemu.args'), `${args.join('\n')}\n`);
    await vm.start(args, opts.bootTimeoutMs ?? 600_000);
    return vm;
  } catch (err) {
    await vm.dispose().catch(() => undefined);
    throw err;
  }
}
