// Argument parsing and exit codes, nothing else. Every subcommand lives in commands/.
import { parseArgs } from 'node:util';
import { PivotError, ExitCode, asPivotError, singleLine } from './errors.ts';
import { log } from './log.ts';
import { versionLine } from './version.ts';
import type { Command, ParsedArgs } from './commands/types.ts';
import { runCommand } from './commands/run.ts';
import { pullCommand } from './commands/pull.ts';
import { resolveCommand } from './commands/resolve.ts';
import { etcMergeCommand } from './commands/etc-merge.ts';
import { statusCommand } from './commands/status.ts';
import { ignitionCommand } from './commands/ignition.ts';

export const COMMANDS: readonly Command[] = [
  runCommand,
  pullCommand,
  resolveCommand,
  etcMergeCommand,
  statusCommand,
  ignitionCommand,
];

const PROG = 'node-image-pivot';

export function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return [
    `${PROG}: switch this node's /usr to the cluster's node image in place, without a reboot.`,
    '',
    `Usage: ${PROG} <command> [options]`,
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Global options:',
    '  -h, --help       show help (also after a command)',
    '  -V, --version    print the tool and embedded Node versions',
    '',
    `Exit codes: 0 ok or skipped, 1 internal, 2 usage/config, 3 registry/auth/network,`,
    `  4 verification, 5 unpack, 6 mount, 7 /etc merge, 8 systemd, 9 preflight, 10 interrupted,`,
    `  11 busy (another run holds the pivot lock).`,
    `Run '${PROG} <command> --help' for a command's options.`,
  ].join('\n');
}

export function commandHelp(cmd: Command): string {
  const rows = Object.entries(cmd.options).map(([name, spec]) => {
    const flag = `${spec.short ? `-${spec.short}, ` : '    '}--${name}${spec.type === 'string' ? ' VALUE' : ''}`;
    return [flag, cmd.optionHelp[name] ?? ''] as const;
  });
  rows.push(['-h, --help', 'show this help']);
  const width = Math.max(...rows.map(([f]) => f.length));
  return [
    `Usage: ${PROG} ${cmd.usage}`,
    '',
    cmd.summary,
    '',
    'Options:',
    ...rows.map(([f, h]) => `  ${f.padEnd(width)}  ${h}`),
    ...(cmd.help ? ['', cmd.help] : []),
  ].join('\n');
}

function usageError(message: string, hint: string): PivotError {
  return new PivotError('usage', message, { fix: hint });
}

/** Parses argv for one command. Throws a usage PivotError with a hint on anything unexpected. */
export function parseCommandArgs(cmd: Command, argv: string[]): ParsedArgs | 'help' {
  if (argv.includes('--help') || argv.includes('-h')) return 'help';
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: cmd.options, allowPositionals: true, strict: true });
  } catch (err) {
    // node's messages are multi-line and mention parseArgs internals; keep the first sentence.
    const msg = singleLine((err as Error).message).replace(/\. To specify a positional.*$/, '');
    throw usageError(`${cmd.name}: ${msg}`, `run '${PROG} ${cmd.name} --help'`);
  }
  const { positionals } = parsed;
  const { names, min, max } = cmd.positionals;
  if (positionals.length < min) {
    throw usageError(`${cmd.name}: missing ${names.slice(positionals.length, min).join(' ')}`, `run '${PROG} ${cmd.name} --help'`);
  }
  if (positionals.length > max) {
    throw usageError(`${cmd.name}: unexpected argument ${JSON.stringify(positionals[max])}`, `run '${PROG} ${cmd.name} --help'`);
  }
  return { values: parsed.values as ParsedArgs['values'], positionals };
}

export async function main(argv: string[]): Promise<number> {
  const [first, ...rest] = argv;
  if (first === undefined || first === '--help' || first === '-h' || first === 'help') {
    process.stdout.write(`${mainHelp()}\n`);
    return first === undefined ? ExitCode.usage : ExitCode.ok;
  }
  if (first === '--version' || first === '-V' || first === 'version') {
    process.stdout.write(`${versionLine()}\n`);
    return ExitCode.ok;
  }
  const cmd = COMMANDS.find((c) => c.name === first);
  try {
    if (!cmd) {
      throw usageError(`unknown command ${JSON.stringify(first)}`, `run '${PROG} --help' for the list of commands`);
    }
    const args = parseCommandArgs(cmd, rest);
    if (args === 'help') {
      process.stdout.write(`${commandHelp(cmd)}\n`);
      return ExitCode.ok;
    }
    return await cmd.run(args);
  } catch (err) {
    return reportFailure(err);
  }
}

/** Prints the one-line cause and fix and returns the exit code. */
export function reportFailure(err: unknown): number {
  const e = asPivotError(err);
  try {
    if (e.kind === 'usage') {
      process.stderr.write(`${PROG}: ${e.message} (hint: ${e.fix})\n`);
    } else {
      log().error({ err: e.toJSON(), exitCode: e.exitCode }, e.oneLine());
    }
    if (e.kind === 'internal' && e.cause instanceof Error && e.cause.stack) {
      log().debug({ stack: e.cause.stack }, 'internal error stack');
    }
  } catch {
    // stderr gone (EPIPE) or broken: the exit code still says what happened.
  }
  return e.exitCode;
}
