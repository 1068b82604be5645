import type { Command } from './types.ts';
import { stringOpt } from './shared.ts';
import { DEFAULT_STATE_DIR, readState, type PivotState } from '../state.ts';
import type { ManagerFacts, UnitStateFacts } from '../systemd/manager.ts';
import { StatusExitCode, asPivotError } from '../errors.ts';

export interface StatusReport {
  state: PivotState | null;
  systemd: ManagerFacts | { error: string };
  /** The agent's units as systemd sees them (is it retrying? is the node parked in the target?). */
  units?: UnitStateFacts[];
}

export const STATUS_UNITS = ['node-image-pivot.service', 'node-image-overlay.service', 'node-image-pivot.target'];

export async function collectStatus(stateDir: string, busAddress?: string): Promise<StatusReport> {
  const state = readState(stateDir) ?? null;
  let systemd: StatusReport['systemd'];
  let units: UnitStateFacts[] | undefined;
  try {
    const { withManager } = await import('../systemd/manager.ts');
    [systemd, units] = await withManager(async (mgr) => [
      await mgr.facts(),
      (await Promise.all(STATUS_UNITS.map((u) => mgr.unitState(u).catch(() => undefined))))
        .filter((u): u is UnitStateFacts => u !== undefined && u.loadState === 'loaded'),
    ] as const, busAddress);
  } catch (err) {
    systemd = { error: asPivotError(err).oneLine() };
  }
  return { state, systemd, ...(units ? { units } : {}) };
}

/** From the pull phase of a bootc image: the ostree commit and image version now staged. */
function osIdentity(s: PivotState): string | undefined {
  const facts = s.phases.find((p) => p.name === 'pull')?.facts ?? {};
  const commit = typeof facts.ostreeCommit === 'string' ? facts.ostreeCommit : undefined;
  const version = typeof facts.imageVersion === 'string' ? facts.imageVersion : undefined;
  if (!commit && !version) return undefined;
  return `os: ${[version ? `version ${version}` : '', commit ? `ostree commit ${commit}` : ''].filter(Boolean).join(', ')}`;
}

/** Which staging the pull used and why: an operator on a live ISO asks what holds the RAM. */
function stagingLine(s: PivotState): string | undefined {
  const facts = s.phases.find((p) => p.name === 'pull')?.facts ?? {};
  if (facts.stagingMode !== 'full' && facts.stagingMode !== 'delta') return undefined;
  const used = typeof facts.stagingUsedBytes === 'number' ? `, ${(facts.stagingUsedBytes / 1024 ** 2).toFixed(0)} MiB in staging` : '';
  const why = typeof facts.stagingModeReason === 'string' && facts.stagingModeReason ? ` (${facts.stagingModeReason})` : '';
  return `staging: ${facts.stagingMode}${used}${why}`;
}

export function formatStatus(r: StatusReport): string {
  const lines: string[] = [];
  const s = r.state;
  if (!s) {
    lines.push('pivot: not run this boot (no state file)');
  } else {
    const img = s.image ? `${s.image.reference}${s.image.digest && !s.image.reference.endsWith(s.image.digest) ? ` @ ${s.image.digest}` : ''}${s.image.releaseImage ? ` (from ${s.image.releaseImage})` : ''}` : '(not resolved yet)';
    lines.push(`pivot: ${s.result}${s.current ? ` (in phase ${s.current})` : ''}, mode ${s.mode}, pid ${s.pid}${s.attempt && s.attempt > 1 ? `, attempt ${s.attempt} this boot` : ''}`);
    lines.push(`image: ${img}`);
    const os = osIdentity(s);
    if (os) lines.push(os);
    const staging = stagingLine(s);
    if (staging) lines.push(staging);
    if (s.skipReason) lines.push(`skipped: ${s.skipReason}`);
    lines.push(`started: ${s.startedAt}, updated: ${s.updatedAt}`);
    for (const p of s.phases) {
      const secs = p.seconds === undefined ? '' : ` ${p.seconds.toFixed(2)} s`;
      lines.push(`  ${p.result === 'done' ? '✓' : p.result === 'failed' ? '✗' : p.result === 'skipped' ? '-' : '…'} ${p.name.padEnd(10)}${secs}`);
    }
    if (s.error) lines.push(`error: ${s.error.line}`);
  }
  for (const u of r.units ?? []) {
    lines.push(`unit: ${u.unit} ${u.activeState} (${u.subState})${u.restarts ? `, restarted ${u.restarts} times` : ''}`);
  }
  if ('error' in r.systemd) lines.push(`systemd: unavailable: ${r.systemd.error}`);
  else lines.push(`systemd: ${r.systemd.version}, state ${r.systemd.systemState}, default target ${r.systemd.defaultTarget}`);
  return lines.join('\n');
}

export const statusCommand: Command = {
  name: 'status',
  summary: "show this boot's pivot: phases, timings, image, error and fix, and systemd's state",
  usage: 'status [--json] [--state-dir DIR]',
  help: `Exit code ${StatusExitCode.ok} when the pivot is done, skipped or not run; ${StatusExitCode.failed} when it failed; ${StatusExitCode.running} while running (apart from run's codes; 2 is a usage error of status itself).`,
  options: {
    json: { type: 'boolean' },
    'state-dir': { type: 'string' },
  },
  optionHelp: {
    json: 'print machine-readable JSON',
    'state-dir': 'where state.json lives (default: /run/node-image-pivot)',
  },
  positionals: { names: [], min: 0, max: 0 },
  async run(args) {
    const report = await collectStatus(stringOpt(args.values, 'state-dir') ?? DEFAULT_STATE_DIR);
    process.stdout.write(args.values.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatStatus(report)}\n`);
    const result = report.state?.result;
    return result === 'failed' ? StatusExitCode.failed : result === 'running' ? StatusExitCode.running : StatusExitCode.ok;
  },
};
