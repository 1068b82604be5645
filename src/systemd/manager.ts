// systemd's Manager over D-Bus: the few calls the pivot needs, made with raw messages rather
// than introspected proxies so that each call is one round trip and every match rule we add is
// removed again (dbus-next 0.10.2 leaked them; the @particle fork fixes its own, we own ours).
import dbus from '@particle/dbus-next';
import { PivotError } from '../errors.ts';

const SYSTEMD = 'org.freedesktop.systemd1';
const MANAGER_PATH = '/org/freedesktop/systemd1';
const MANAGER_IFACE = 'org.freedesktop.systemd1.Manager';
const PROPS_IFACE = 'org.freedesktop.DBus.Properties';
export const DEFAULT_SYSTEM_BUS = 'unix:path=/run/dbus/system_bus_socket';

/** JobRemoved results systemd documents; anything else is treated as a failure. */
export type JobResult = 'done' | 'canceled' | 'timeout' | 'failed' | 'dependency' | 'skipped' | (string & {});

export interface JobRemoved {
  id: number;
  job: string;
  unit: string;
  result: JobResult;
}

export interface ManagerFacts {
  version: string;
  systemState: string;
  defaultTarget: string;
  virtualization: string;
}

export interface UnitFailure {
  unit: string;
  activeState: string;
  subState: string;
}

const JOB_REMOVED_MATCH = `type='signal',sender='${SYSTEMD}',path='${MANAGER_PATH}',interface='${MANAGER_IFACE}',member='JobRemoved'`;

function systemdError(action: string, err: unknown, fix: string): PivotError {
  const e = err as { type?: string; text?: string; message?: string };
  const detail = e.type ? `${e.type}: ${e.text ?? e.message}` : (e.message ?? String(err));
  return new PivotError('systemd', `${action} failed: ${detail}`, { fix, cause: err });
}

export class SystemdManager {
  readonly bus: dbus.MessageBus;
  private readonly jobWaiters = new Map<string, (r: JobRemoved) => void>();
  /** JobRemoved signals that arrived before anyone waited for them (they can beat the reply). */
  private readonly finishedJobs = new Map<string, JobRemoved>();
  private subscribed = false;
  private readonly onMessage = (msg: dbus.Message): void => {
    if (msg.type !== dbus.MessageType.SIGNAL || msg.interface !== MANAGER_IFACE || msg.member !== 'JobRemoved') return;
    const [id, job, unit, result] = msg.body as [number, string, string, string];
    const removed: JobRemoved = { id, job, unit, result };
    const waiter = this.jobWaiters.get(job);
    if (waiter) waiter(removed);
    else this.finishedJobs.set(job, removed);
  };

  private constructor(bus: dbus.MessageBus) {
    this.bus = bus;
    this.bus.on('message', this.onMessage);
  }

  /** Connects to the system bus (or `address`, for tests with a private dbus-daemon). */
  static async connect(address = process.env.DBUS_SYSTEM_BUS_ADDRESS ?? DEFAULT_SYSTEM_BUS): Promise<SystemdManager> {
    const bus = dbus.sessionBus({ busAddress: address });
    try {
      await new Promise<void>((resolve, reject) => {
        bus.once('connect', () => resolve());
        bus.once('error', reject);
      });
    } catch (err) {
      bus.disconnect();
      throw systemdError(`connecting to the system bus at ${address}`, err, 'make sure dbus.socket is active (systemctl status dbus.socket)');
    }
    bus.on('error', () => {
      // Errors after connect surface as rejected calls; a listener keeps them from crashing us.
    });
    return new SystemdManager(bus);
  }

  async call(member: string, signature = '', body: unknown[] = [], iface = MANAGER_IFACE, path = MANAGER_PATH, destination = SYSTEMD): Promise<unknown[]> {
    const reply = await this.bus.call(
      new dbus.Message({ destination, path, interface: iface, member, signature, body }),
    );
    return reply?.body ?? [];
  }

  private busCall(member: 'AddMatch' | 'RemoveMatch', rule: string): Promise<unknown[]> {
    return this.call(member, 's', [rule], 'org.freedesktop.DBus', '/org/freedesktop/DBus', 'org.freedesktop.DBus');
  }

  async getProperty(name: string, iface = MANAGER_IFACE, path = MANAGER_PATH): Promise<unknown> {
    const [variant] = await this.call('Get', 'ss', [iface, name], PROPS_IFACE, path);
    return (variant as dbus.Variant).value;
  }

  async facts(): Promise<ManagerFacts> {
    try {
      const [version, systemState, virtualization] = await Promise.all([
        this.getProperty('Version'),
        this.getProperty('SystemState'),
        this.getProperty('Virtualization'),
      ]);
      const [defaultTarget] = await this.call('GetDefaultTarget');
      return {
        version: String(version),
        systemState: String(systemState),
        defaultTarget: String(defaultTarget),
        virtualization: String(virtualization),
      };
    } catch (err) {
      throw systemdError('reading systemd manager properties', err, 'check that PID 1 is systemd and the bus policy lets root talk to it');
    }
  }

  /** Subscribe() makes systemd emit job signals to us; call it before starting jobs. */
  async subscribe(): Promise<void> {
    if (this.subscribed) return;
    await this.busCall('AddMatch', JOB_REMOVED_MATCH).catch((err: unknown) => {
      throw systemdError('adding the JobRemoved match rule', err, 'check the system bus is dbus-daemon or dbus-broker');
    });
    this.subscribed = true;
    await this.call('Subscribe');
  }

  async reload(): Promise<void> {
    try {
      await this.call('Reload');
    } catch (err) {
      throw systemdError('systemd daemon-reload', err, "run 'journalctl -b -u init.scope' to see why systemd refused the reload");
    }
  }

  /** Starts a job and returns its object path. Register waiters before the reply can race. */
  async startUnit(unit: string, mode: 'replace' | 'isolate' | 'fail'): Promise<string> {
    try {
      const [job] = await this.call('StartUnit', 'ss', [unit, mode]);
      return String(job);
    } catch (err) {
      throw systemdError(`StartUnit(${unit}, ${mode})`, err, mode === 'isolate'
        ? `make sure ${unit} exists and has AllowIsolate=yes`
        : `check 'systemctl status ${unit}'`);
    }
  }

  async tryRestartUnit(unit: string): Promise<string> {
    try {
      const [job] = await this.call('TryRestartUnit', 'ss', [unit, 'replace']);
      return String(job);
    } catch (err) {
      throw systemdError(`TryRestartUnit(${unit})`, err, `check 'systemctl status ${unit}'`);
    }
  }

  /** Resolves with the JobRemoved of `job`, whether it arrived before or after this call. */
  waitForJob(job: string, timeoutMs: number): Promise<JobRemoved> {
    const early = this.finishedJobs.get(job);
    if (early) {
      this.finishedJobs.delete(job);
      return Promise.resolve(early);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.jobWaiters.delete(job);
        reject(new PivotError('systemd', `job ${job} did not finish within ${Math.round(timeoutMs / 1000)} s`, {
          fix: "run 'systemctl list-jobs' to see what it waits for; raise timeouts.isolateSeconds if the node is slow",
        }));
      }, timeoutMs);
      this.jobWaiters.set(job, (r) => {
        clearTimeout(timer);
        this.jobWaiters.delete(job);
        resolve(r);
      });
    });
  }

  /** Units in the failed state, for naming culprits when a job does not end in "done". */
  async failedUnits(): Promise<UnitFailure[]> {
    const [units] = await this.call('ListUnitsFiltered', 'as', [['failed']]);
    return (units as unknown[][]).map((u) => ({ unit: String(u[0]), activeState: String(u[3]), subState: String(u[4]) }));
  }

  async close(): Promise<void> {
    this.bus.off('message', this.onMessage);
    if (this.subscribed) {
      await this.call('Unsubscribe').catch(() => undefined);
      await this.busCall('RemoveMatch', JOB_REMOVED_MATCH).catch(() => undefined);
    }
    this.bus.disconnect();
  }
}
