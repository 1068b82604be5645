import type { Command } from './types.ts';
import { progressFdOption, progressFor, resultOfError } from './progress-option.ts';
import { stringOpt } from './shared.ts';
import { ExitCode, PivotError, asPivotError } from '../errors.ts';
import { log } from '../log.ts';
import type { Progress } from '../progress.ts';

function installSignalHandlers(requestStop: (signal: string) => 'now' | 'deferred' | 'finished', progress: Progress): void {
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => {
      const how = requestStop(signal);
      // The pivot finished (only the final reload was left): a success, and the state says so.
      if (how === 'finished') process.exit(ExitCode.ok);
      if (how !== 'now') return;
      // A pipe takes a short line at once, so the installer still hears why the run ended.
      progress.result({ result: 'failed', exitCode: ExitCode.interrupted, error: { kind: 'interrupted', message: `stopped by ${signal}`, fix: 'nothing to do: the next run picks up from here', line: `interrupted: stopped by ${signal}` } });
      process.exit(ExitCode.interrupted);
    });
  }
}

function lockWaitSeconds(values: Record<string, unknown>): number | undefined {
  const text = stringOpt(values, 'lock-wait');
  if (text === undefined) return undefined;
  if (!/^\d{1,7}$/.test(text)) {
    throw new PivotError('usage', `--lock-wait ${JSON.stringify(text)} must be a whole number of seconds`, { field: '--lock-wait', fix: "run 'node-image-pivot run --help'" });
  }
  return Number(text);
}

export const runCommand: Command = {
  name: 'run',
  summary: 'pivot this node: resolve, pull, unpack, merge /etc, mount /usr, refresh systemd, isolate',
  usage: 'run [--config FILE] [--no-isolate] [--dry-run] [--progress-fd N] [--no-wait | --lock-wait SECONDS]',
  help: [
    'Reads /etc/node-image-pivot/config.json unless --config is given. Exits 0 when the pivot is',
    'done or not needed (already done this boot, or a skipIfPathExists path exists).',
    '--dry-run pulls and unpacks into the staging directory (a cache) to plan the /etc merge,',
    'prints the plan, and changes nothing on the system: no mount, no /etc change, no state file.',
    'One run at a time per node: a second run waits for the first (it logs the holder\'s pid and',
    'unit), and exits 11 if the first still runs after --lock-wait seconds, or at once with --no-wait.',
    'A failed run leaves its one-line cause and fix at the console login prompt',
    '(/run/issue.d/node-image-pivot.issue); a successful run removes it.',
    '--progress-fd writes JSON lines for an installer\'s UI (docs/progress.md).',
  ].join('\n'),
  options: {
    config: { type: 'string', short: 'c' },
    'no-isolate': { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
    ...progressFdOption.options,
    'no-wait': { type: 'boolean' },
    'lock-wait': { type: 'string' },
  },
  optionHelp: {
    config: 'config file (default: /etc/node-image-pivot/config.json)',
    'no-isolate': 'service mode: stop after the systemd refresh, do not isolate',
    'dry-run': 'print the plan (image, digest, sizes, /etc actions, conflicts) and change nothing',
    json: 'with --dry-run: print the plan as JSON',
    ...progressFdOption.optionHelp,
    'no-wait': 'exit 11 at once if another run holds the pivot lock, instead of waiting',
    'lock-wait': 'seconds to wait for another run to finish (default: 1800)',
  },
  positionals: { names: [], min: 0, max: 0 },
  async run(args) {
    const [{ DEFAULT_CONFIG_PATH, loadConfig }, { requestStop, runPivot }, { hostSteps }, { PHASES, readState }, lock, consoleIssue] = await Promise.all([
      import('../config.ts'), import('../pivot.ts'), import('../host-steps.ts'), import('../state.ts'), import('../lock.ts'), import('../console-issue.ts'),
    ]);
    const dryRun = args.values['dry-run'] === true;
    if (args.values['no-wait'] && stringOpt(args.values, 'lock-wait') !== undefined) {
      throw new PivotError('usage', 'run: give --no-wait or --lock-wait, not both', { field: '--no-wait', fix: "run 'node-image-pivot run --help'" });
    }
    const waitSeconds = lockWaitSeconds(args.values);
    const progress = progressFor(args.values, 'run', PHASES);
    let stateDir: string | undefined;
    try {
      const cfg = loadConfig(stringOpt(args.values, 'config') ?? DEFAULT_CONFIG_PATH);
      stateDir = cfg.stateDir;
      installSignalHandlers(requestStop, progress);
      // Before runPivot: a waiting run must not touch the state file the running one writes.
      await lock.acquirePivotLock({ wait: args.values['no-wait'] !== true, ...(waitSeconds === undefined ? {} : { waitSeconds }) });
      const started = performance.now();
      const outcome = await runPivot({ cfg, isolate: !args.values['no-isolate'], dryRun, progress, steps: hostSteps() });
      const seconds = ((performance.now() - started) / 1000).toFixed(1);
      if (outcome.result === 'dry-run') {
        const { image, etc, stagedRoot } = outcome.plan;
        if (args.values.json) {
          process.stdout.write(`${JSON.stringify(outcome.plan, null, 2)}\n`);
        } else {
          process.stdout.write([
            `image:   ${image.reference}`,
            `digest:  ${image.manifestDigest}`,
            `layers:  ${image.layerCount}, ${(image.compressedBytes / 1024 ** 2).toFixed(1)} MiB compressed`,
            `staged:  ${stagedRoot}`,
            `/etc:    ${etc.actions} actions, ${etc.warnings.length} warnings, ${etc.conflicts.length} conflicts`,
            etc.text,
          ].join('\n') + '\n');
        }
        progress.result({ result: 'dry-run', exitCode: ExitCode.ok, digest: image.manifestDigest });
      } else {
        consoleIssue.clearConsole();
        const digest = outcome.state.image?.digest;
        if (outcome.result === 'skipped') {
          log().info(`node-image-pivot: nothing to do (${outcome.reason})`);
          progress.result({ result: 'skipped', exitCode: ExitCode.ok, reason: outcome.reason, ...(digest ? { digest } : {}) });
        } else {
          log().info({ seconds: Number(seconds), digest }, `node-image-pivot: pivoted to ${digest} in ${seconds} s`);
          progress.result({ result: 'done', exitCode: ExitCode.ok, ...(digest ? { digest } : {}) });
        }
      }
      await progress.close();
      return ExitCode.ok;
    } catch (err) {
      const e = asPivotError(err);
      // A busy lock means another run is at work; a typo on the command line is for the terminal.
      if (!dryRun && e.kind !== 'busy' && e.kind !== 'usage') {
        let state;
        try {
          state = stateDir === undefined ? undefined : readState(stateDir);
        } catch { /* the console line goes out without the attempt number */ }
        consoleIssue.showFailureOnConsole(e, state?.pid === process.pid ? state.attempt : undefined);
      }
      progress.result(resultOfError(e));
      await progress.close();
      throw e;
    }
  },
};
