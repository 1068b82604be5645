// A private dbus-daemon (minimal config: one socket, allow everything, a low match-rule limit so
// leaks show up fast) and a scripted fake org.freedesktop.systemd1 Manager on it, written at the
// message level so a test controls exactly what the real one does racily: the order of a job's
// JobRemoved signal and the StartUnit reply, other jobs' signals, failures and silence.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import dbus from '@particle/dbus-next';
import { afterAll, afterEach, beforeAll, beforeEach } from 'vitest';
import { SystemdManager } from '../../src/systemd/manager.ts';
// (types.d.ts declares newError's first parameter a string; at run time it is the call Message)

export const MATCH_RULE_LIMIT = 64;

export interface PrivateBus {
  address: string;
  pid: number;
  stop(): void;
}

export function startPrivateBus(): PrivateBus {
  const dir = mkdtempSync(join(tmpdir(), 'nip-dbus-'));
  const config = join(dir, 'bus.conf');
  writeFileSync(config, `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path=${join(dir, 'bus.sock')}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
  <limit name="max_match_rules_per_connection">${MATCH_RULE_LIMIT}</limit>
</busconfig>
`);
  const out = execFileSync('dbus-daemon', ['--config-file', config, '--print-address=1', '--print-pid=1', '--fork', '--nopidfile'], { encoding: 'utf8' });
  const [address, pid] = out.trim().split('\n') as [string, string];
  return {
    address,
    pid: Number(pid),
    stop() {
      try {
        process.kill(Number(pid), 'SIGTERM');
      } catch {
        // gone
      }
      // The daemon unlinks its socket as it exits; removing the dir under it races with that.
      const deadline = Date.now() + 3000;
      const running = () => {
        try {
          return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); // a zombie has exited
        } catch {
          return false;
        }
      };
      while (running() && Date.now() < deadline) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const MANAGER_PATH = '/org/freedesktop/systemd1';
const MANAGER_IFACE = 'org.freedesktop.systemd1.Manager';

/** How the fake answers one StartUnit/TryRestartUnit call. */
export interface JobScript {
  /** 'signal-first' sends JobRemoved before the method reply, as systemd can. */
  order?: 'signal-first' | 'reply-first';
  result?: string;
  /** Never send JobRemoved (a hung job). */
  silent?: boolean;
  /** JobRemoved signals for other jobs, sent before ours (e.g. the canceled pivot target job). */
  others?: Array<{ unit: string; result: string }>;
  /** Answer with a D-Bus error instead of a job. */
  error?: { name: string; text: string };
  delayMs?: number;
}

export interface FakeUnit {
  name: string;
  activeState: string;
  subState: string;
}

export class FakeSystemd {
  readonly bus: dbus.MessageBus;
  readonly calls: Array<{ member: string; body: unknown[] }> = [];
  /** Scripts consumed in order by StartUnit and TryRestartUnit; the default is a clean "done". */
  readonly scripts: JobScript[] = [];
  failed: FakeUnit[] = [];
  reloadError: { name: string; text: string } | undefined;
  props: Record<string, string> = { Version: '252.39-1~deb12u2', SystemState: 'running', Virtualization: 'systemd-nspawn' };
  defaultTarget = 'multi-user.target';
  private nextJob = 100;

  private constructor(bus: dbus.MessageBus) {
    this.bus = bus;
    bus.addMethodHandler((msg: dbus.Message) => this.handle(msg));
  }

  static async start(address: string): Promise<FakeSystemd> {
    const bus = dbus.sessionBus({ busAddress: address });
    await new Promise<void>((resolve, reject) => {
      bus.once('connect', () => resolve());
      bus.once('error', reject);
    });
    await bus.requestName('org.freedesktop.systemd1', 0);
    return new FakeSystemd(bus);
  }

  stop(): void {
    this.bus.disconnect();
  }

  count(member: string): number {
    return this.calls.filter((c) => c.member === member).length;
  }

  private signal(id: number, job: string, unit: string, result: string): void {
    this.bus.send(dbus.Message.newSignal(MANAGER_PATH, MANAGER_IFACE, 'JobRemoved', 'uoss', [id, job, unit, result]));
  }

  private reply(msg: dbus.Message, signature = '', body: unknown[] = []): void {
    this.bus.send(dbus.Message.newMethodReturn(msg, signature, body));
  }

  private handle(msg: dbus.Message): boolean {
    if (msg.path !== MANAGER_PATH) return false;
    this.calls.push({ member: msg.member ?? '', body: msg.body as unknown[] });
    if (msg.interface === 'org.freedesktop.DBus.Properties' && msg.member === 'Get') {
      const [, name] = msg.body as [string, string];
      this.reply(msg, 'v', [new dbus.Variant('s', this.props[name] ?? '')]);
      return true;
    }
    switch (msg.member) {
      case 'Subscribe':
      case 'Unsubscribe':
        this.reply(msg);
        return true;
      case 'Reload':
        if (this.reloadError) this.bus.send(dbus.Message.newError(msg as unknown as string, this.reloadError.name, this.reloadError.text));
        else this.reply(msg);
        return true;
      case 'GetDefaultTarget':
        this.reply(msg, 's', [this.defaultTarget]);
        return true;
      case 'ListUnitsFiltered':
        this.reply(msg, 'a(ssssssouso)', [this.failed.map((u) => [u.name, '', 'loaded', u.activeState, u.subState, '', `${MANAGER_PATH}/unit/x`, 0, '', '/'])]);
        return true;
      case 'StartUnit':
      case 'TryRestartUnit': {
        const [unit] = msg.body as [string, string];
        const script = this.scripts.shift() ?? {};
        const answer = () => {
          if (script.error) {
            this.bus.send(dbus.Message.newError(msg as unknown as string, script.error.name, script.error.text));
            return;
          }
          for (const o of script.others ?? []) {
            const id = this.nextJob++;
            this.signal(id, `${MANAGER_PATH}/job/${id}`, o.unit, o.result);
          }
          const id = this.nextJob++;
          const job = `${MANAGER_PATH}/job/${id}`;
          const done = () => {
            if (!script.silent) this.signal(id, job, unit, script.result ?? 'done');
          };
          if (script.order === 'signal-first') {
            done();
            this.reply(msg, 'o', [job]);
          } else {
            this.reply(msg, 'o', [job]);
            setTimeout(done, 5);
          }
        };
        if (script.delayMs) setTimeout(answer, script.delayMs);
        else answer();
        return true;
      }
      default:
        return false;
    }
  }
}

export interface FakeSystemdContext {
  bus: PrivateBus;
  fake: FakeSystemd;
  mgr: SystemdManager;
}

/**
 * Registers the hooks every fake-Manager test file needs: one private bus per file, a fresh
 * fake systemd and a connected SystemdManager per test. Read the fields inside tests only.
 */
export function useFakeSystemd(cleanup?: () => void): FakeSystemdContext {
  const ctx = {} as FakeSystemdContext;
  beforeAll(() => {
    ctx.bus = startPrivateBus();
  });
  afterAll(() => ctx.bus.stop());
  beforeEach(async () => {
    ctx.fake = await FakeSystemd.start(ctx.bus.address);
    ctx.mgr = await SystemdManager.connect(ctx.bus.address, { callTimeoutMs: 2000 });
  });
  afterEach(async () => {
    cleanup?.();
    await ctx.mgr.close();
    ctx.fake.stop();
  });
  return ctx;
}
