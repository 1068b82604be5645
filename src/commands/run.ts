import type { Command } from './types.ts';
import { stringOpt } from './shared.ts';
import { ExitCode } from '../errors.ts';
import { log } from '../log.ts';

function installSignalHandlers(requestStop: (signal: string) => 'now' | 'deferred'): void {
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => {
      if (requestStop(signal) === 'now') process.exit(ExitCode.interrupted);
    });
  }
}

export const runCommand: Command = {
  name: 'run',
  summary: 'pivot this node: resolve, pull, unpack, merge /etc, mount /usr, refresh systemd, isolate',
  usage: 'run [--config FILE] [--no-isolate] [--dry-run]',
  help: [
    'Reads /etc/node-image-pivot/config.json unless --config is given. Exits 0 when the pivot is',
    'done or not needed (already done this boot, or a skipIfPathExists path exists).',
    '--dry-run pulls and unpacks into the staging directory (a cache) to plan the /etc merge,',
    'prints the plan, and changes nothing on the system: no mount, no /etc change, no state file.',
  ].join('\n'),
  options: {
    config: { type: 'string', short: 'c' },
    'no-isolate': { type: 'boolean' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
  },
  optionHelp: {
    config: 'config file (default: /etc/node-image-pivot/config.json)',
    'no-isolate': 'service mode: stop after the systemd refresh, do not isolate',
    'dry-run': 'print the plan (image, digest, sizes, /etc actions, conflicts) and change nothing',
    json: 'with --dry-run: print the plan as JSON',
  },
  positionals: { names: [], min: 0, max: 0 },
  async run(args) {
    const [{ DEFAULT_CONFIG_PATH, loadConfig }, { requestStop, runPivot }, { realCapabilities }, { Progress }] = await Promise.all([
      import('../config.ts'), import('../pivot.ts'), import('../pivot-capabilities.ts'), import('../progress.ts'),
    ]);
    const cfg = loadConfig(stringOpt(args.values, 'config') ?? DEFAULT_CONFIG_PATH);
    installSignalHandlers(requestStop);
    const started = performance.now();
    const outcome = await runPivot({
      cfg,
      isolate: !args.values['no-isolate'],
      dryRun: args.values['dry-run'] === true,
      progress: new Progress(),
      caps: realCapabilities(),
    });
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
    } else if (outcome.result === 'skipped') {
      log().info(`node-image-pivot: nothing to do (${outcome.reason})`);
    } else {
      log().info({ seconds: Number(seconds), digest: outcome.state.image?.digest }, `node-image-pivot: pivoted to ${outcome.state.image?.digest} in ${seconds} s`);
    }
    return ExitCode.ok;
  },
};
