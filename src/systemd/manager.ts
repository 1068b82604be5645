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

export interface UnitStateFacts {
  unit: string;
  loadState: string;
  activeState: string;
  subState: string;
  restarts?: number;
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
  // The D-Bus error name is what callers branch on (never the text).
  return new PivotError('systemd', `${action} failed: ${detail}`, { fix, cause: err, ...(e.type ? { dbusName: e.type, facts: { dbusError: e.type } } : {}) });
}

/** Early JobRemoved signals kept while a start is in flight; systemd emits one per job, system-wide. */
const MAX_EARLY_JOBS = 256;
/** A method call that gets no reply in this time is treated as a dead bus. Reload can be slow. */
const DEFAULT_CALL_TIMEOUT_MS = 180_000;

export class SystemdManager {
  readonly bus: dbus.MessageBus;
  private readonly jobWaiters = new Map<string, { resolve: (r: JobRemoved) => void; reject: (e: Error) => void }>();
  /**
   * JobRemoved signals that arrived before anyone waited for them: the signal can beat the
   * StartUnit reply that tells us the job path. Only kept while a job-starting call is in
   * flight (after Subscribe, systemd signals every job on the system), and bounded.
   */
  private readonly finishedJobs = new Map<string, JobRemoved>();
  private startsInFlight = 0;
  private subscribed = false;
  private closedError: PivotError | undefined;
  private readonly closeListeners = new Set<(e: PivotError) => void>();
  private readonly callTimeoutMs: number;
  private readonly onMessage = (msg: dbus.Message): void => {
    if (msg.type !== dbus.MessageType.SIGNAL || msg.interface !== MANAGER_IFACE || msg.member !== 'JobRemoved') return;
    const [id, job, unit, result] = msg.body as [number, string, string, string];
    const removed: JobRemoved = { id, job, unit, result };
    const waiter = this.jobWaiters.get(job);
    if (waiter) {
      waiter.resolve(removed);
    } else if (this.startsInFlight > 0) {
      this.finishedJobs.set(job, removed);
      if (this.finishedJobs.size > MAX_EARLY_JOBS) this.finishedJobs.delete(this.finishedJobs.keys().next().value!);
    }
  };

  private constructor(bus: dbus.MessageBus, callTimeoutMs: number) {
    this.bus = bus;
    this.callTimeoutMs = callTimeoutMs;
    this.bus.on('message', this.onMessage);
    // dbus-next leaves pending calls unanswered when the socket closes; fail them instead, so a
    // dying bus during an isolate is reported rather than waited out.
    const conn = (bus as unknown as { _connection?: { on?(ev: string, fn: () => void): void } })._connection;
    conn?.on?.('end', () => this.markClosed(new PivotError('systemd', 'the D-Bus connection to systemd closed', {
      fix: "check 'systemctl status dbus.service' and the journal of PID 1 (journalctl -b -u init.scope)",
    })));
  }

  private markClosed(err: PivotError): void {
    if (this.closedError) return;
    this.closedError = err;
    for (const w of [...this.jobWaiters.values()]) w.reject(err);
    this.jobWaiters.clear();
    this.finishedJobs.clear();
    for (const l of this.closeListeners) l(err);
  }

  /** Connects to the system bus (or `address`, for tests with a private dbus-daemon). */
  static async connect(
    address = process.env.DBUS_SYSTEM_BUS_ADDRESS ?? DEFAULT_SYSTEM_BUS,
    opts: { callTimeoutMs?: number } = {},
  ): Promise<SystemdManager> {
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
    return new SystemdManager(bus, opts.callTimeoutMs ?? DEFAULT_CALL_TIMEOUT_MS);
  }

  async call(member: string, signature = '', body: unknown[] = [], iface = MANAGER_IFACE, path = MANAGER_PATH, destination = SYSTEMD): Promise<unknown[]> {
    if (this.closedError) throw this.closedError;
    let timer: NodeJS.Timeout | undefined;
    let onClose: ((e: PivotError) => void) | undefined;
    const abandoned = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new PivotError('systemd', `no reply to ${member} within ${Math.round(this.callTimeoutMs / 1000)} s`, {
        fix: "check that PID 1 is responsive (systemctl list-jobs) and 'systemctl status dbus.service'",
      })), this.callTimeoutMs);
      onClose = reject;
      this.closeListeners.add(reject);
    });
    try {
      const reply = await Promise.race([
        this.bus.call(new dbus.Message({ destination, path, interface: iface, member, signature, body })),
        abandoned,
      ]);
      return reply?.body ?? [];
    } finally {
      clearTimeout(timer);
      if (onClose) this.closeListeners.delete(onClose);
    }
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
  startUnit(unit: string, mode: 'replace' | 'isolate' | 'fail'): Promise<string> {
    return this.queueJob('StartUnit', unit, mode, mode === 'isolate' ? `make sure ${unit} exists and has AllowIsolate=yes` : `check 'systemctl status ${unit}'`);
  }

  tryRestartUnit(unit: string): Promise<string> {
    return this.queueJob('TryRestartUnit', unit, 'replace', `check 'systemctl status ${unit}'`);
  }

  private async queueJob(member: 'StartUnit' | 'TryRestartUnit', unit: string, mode: string, fix: string): Promise<string> {
    this.startsInFlight++;
    try {
      const [job] = await this.call(member, 'ss', [unit, mode]);
      return String(job);
    } catch (err) {
      throw systemdError(`${member}(${unit}, ${mode})`, err, fix);
    } finally {
      this.startsInFlight--;
    }
  }

  /**
   * Resolves with the JobRemoved of `job`, whether it arrived before or after this call. Call it
   * right after the start call returned (early signals are kept only while a start is in flight).
   */
  waitForJob(job: string, timeoutMs: number): Promise<JobRemoved> {
    if (this.closedError) return Promise.reject(this.closedError);
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
      this.jobWaiters.set(job, {
        resolve: (r) => {
          clearTimeout(timer);
          this.jobWaiters.delete(job);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
    });
  }

  /** A unit's state as `systemctl status` shows it; `restarts` only for services. */
  async unitState(unit: string): Promise<UnitStateFacts> {
    const [path] = await this.call('LoadUnit', 's', [unit]);
    const unitPath = String(path);
    const get = (name: string, iface = 'org.freedesktop.systemd1.Unit'): Promise<unknown> => this.getProperty(name, iface, unitPath);
    const [loadState, activeState, subState] = await Promise.all([get('LoadState'), get('ActiveState'), get('SubState')]);
    const facts: UnitStateFacts = { unit, loadState: String(loadState), activeState: String(activeState), subState: String(subState) };
    if (unit.endsWith('.service') && facts.loadState === 'loaded') facts.restarts = Number(await get('NRestarts', 'org.freedesktop.systemd1.Service'));
    return facts;
  }

  /** Units in the failed state, for naming culprits when a job does not end in "done". */
  async failedUnits(): Promise<UnitFailure[]> {
    const [units] = await this.call('ListUnitsFiltered', 'as', [['failed']]);
    return (units as unknown[][]).map((u) => ({ unit: String(u[0]), activeState: String(u[3]), subState: String(u[4]) }));
  }

  /** Undoes subscribe(): systemd stops sending job signals and the bus forgets our match rule. */
  async unsubscribe(): Promise<void> {
    if (!this.subscribed) return;
    this.subscribed = false;
    await this.call('Unsubscribe').catch(() => undefined);
    await this.busCall('RemoveMatch', JOB_REMOVED_MATCH).catch(() => undefined);
  }

  /** Unsubscribes, fails anything still waiting, and disconnects. Idempotent. */
  async close(): Promise<void> {
    if (!this.closedError) await this.unsubscribe();
    this.bus.off('message', this.onMessage);
    this.markClosed(new PivotError('systemd', 'the systemd manager connection was closed while a job was pending', {
      fix: 'report this as a bug: the agent closed its bus connection too early',
    }));
    this.bus.disconnect();
  }
}

/** Connects, runs `fn`, and always closes the connection (match rules included). */
export async function withManager<T>(fn: (mgr: SystemdManager) => Promise<T>, address?: string): Promise<T> {
  const mgr = await SystemdManager.connect(address);
  try {
    return await fn(mgr);
  } finally {
    await mgr.close();
  }
}
