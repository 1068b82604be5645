// The two systemd steps at the end of a pivot, over D-Bus (manager.ts) rather than systemctl, so
// that we wait for exactly our job and name what failed.
//
//   refreshSystemd: Reload() so units present in both images take their new definitions; then
//     systemd-sysusers and systemd-tmpfiles --create for the new image's users and directories;
//     then try-restart the units that must pick up the new /usr now (sshd by default).
//   isolate: Subscribe(), handler already registered, StartUnit(target, "isolate"), and wait for
//     THAT job's JobRemoved. The agent's unit has IgnoreOnIsolate=yes, so it survives to report.
import { runThroughPipe } from '../child-output.ts';
import { PivotError } from '../errors.ts';
import { failpoint } from '../failpoints.ts';
import { log } from '../log.ts';
import type { JobResult, SystemdManager, UnitFailure } from './manager.ts';

export interface IsolateResult {
  target: string;
  job: string;
  result: JobResult;
  /** Units in the failed state once the isolate ended; informational when result is "done". */
  failedUnits: UnitFailure[];
  seconds: number;
}

function listFailed(units: UnitFailure[]): string {
  return units.length ? units.map((u) => u.unit).join(', ') : 'none in the failed state';
}

/** Throws PivotError('systemd') unless the isolate job ends "done" (unknown results count as failures). */
export async function isolate(mgr: SystemdManager, target: string, timeoutMs: number): Promise<IsolateResult> {
  const t0 = performance.now();
  await mgr.subscribe();
  failpoint('systemd.isolate.start');
  const job = await mgr.startUnit(target, 'isolate');
  log().info({ target, job }, 'isolate job queued');
  const removed = await mgr.waitForJob(job, timeoutMs);
  const failedUnits = await mgr.failedUnits().catch(() => []);
  const seconds = Math.round(performance.now() - t0) / 1000;
  if (removed.result !== 'done') {
    throw new PivotError('systemd', `isolating to ${target} ended "${removed.result}"; failed units: ${listFailed(failedUnits)}`, {
      fix: `run 'systemctl status ${failedUnits[0]?.unit ?? target}' and 'journalctl -b -u ${failedUnits[0]?.unit ?? target}', fix the cause, then 'systemctl isolate ${target}'`,
      facts: { target, job, result: removed.result, failedUnits: failedUnits.map((u) => u.unit) },
    });
  }
  return { target, job, result: removed.result, failedUnits, seconds };
}

export interface CommandResult {
  exitCode: number;
  stderr: string;
}

export type RunCommand = (file: string, args: string[]) => Promise<CommandResult>;

// Through a pipe: systemd-sysusers and systemd-tmpfiles enter domains of their own, which may
// not use the agent's stdio sockets (denied in the VM, and their messages were lost).
export const runRefreshHelper: RunCommand = async (file, args) => {
  const r = await runThroughPipe([file, ...args], 20, 300_000);
  return { exitCode: r.exitCode, stderr: r.output };
};

export interface RefreshOptions {
  restartUnits: string[];
  /** How long each try-restart job may take. Default 120 s. */
  jobTimeoutMs?: number;
  /** Runs systemd-sysusers and systemd-tmpfiles (tests substitute it). */
  run?: RunCommand;
}

export interface RefreshResult {
  reloadSeconds: number;
  /** Unit -> JobRemoved result, or "not-found" when the unit does not exist in either image. */
  restarted: Record<string, string>;
  /** systemd-tmpfiles reports partial failures (one bad line) with a non-zero exit; kept here. */
  warnings: string[];
}

function firstLine(text: string): string {
  return text.trim().split('\n')[0] ?? '';
}

export async function refreshSystemd(mgr: SystemdManager, opts: RefreshOptions): Promise<RefreshResult> {
  const run = opts.run ?? runRefreshHelper;
  const warnings: string[] = [];
  const t0 = performance.now();
  failpoint('systemd.reload');
  await mgr.reload();
  const reloadSeconds = Math.round(performance.now() - t0) / 1000;

  failpoint('systemd.sysusers');
  const users = await run('systemd-sysusers', []);
  if (users.exitCode !== 0) {
    // A missing system user breaks the services that need it: this is not a warning.
    throw new PivotError('systemd', `systemd-sysusers failed with exit ${users.exitCode}: ${firstLine(users.stderr)}`, {
      fix: "run 'systemd-sysusers' by hand to see which sysusers.d line of the new image fails, and fix the image",
    });
  }
  failpoint('systemd.tmpfiles');
  const tmp = await run('systemd-tmpfiles', ['--create']);
  if (tmp.exitCode !== 0) {
    const w = `systemd-tmpfiles --create exited ${tmp.exitCode}: ${firstLine(tmp.stderr)}`;
    log().warn({ exitCode: tmp.exitCode, stderr: tmp.stderr.slice(0, 2000) }, w);
    warnings.push(w);
  }

  const restarted: Record<string, string> = {};
  await mgr.subscribe();
  for (const unit of opts.restartUnits) {
    failpoint('systemd.restart');
    let job: string;
    try {
      job = await mgr.tryRestartUnit(unit);
    } catch (err) {
      if (err instanceof PivotError && err.dbusName === 'org.freedesktop.systemd1.NoSuchUnit') {
        restarted[unit] = 'not-found';
        continue;
      }
      throw err;
    }
    const removed = await mgr.waitForJob(job, opts.jobTimeoutMs ?? 120_000);
    restarted[unit] = removed.result;
    if (removed.result !== 'done') {
      throw new PivotError('systemd', `try-restart of ${unit} ended "${removed.result}"`, {
        fix: `run 'journalctl -b -u ${unit}' to see why it failed with the new /usr`,
        facts: { unit, result: removed.result },
      });
    }
  }
  return { reloadSeconds, restarted, warnings };
}
