import type { ParseArgsConfig } from 'node:util';

export type OptionSpec = NonNullable<ParseArgsConfig['options']>;

export interface ParsedArgs {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/** One subcommand. cli.ts parses argv against `options`, then calls run(). */
export interface Command {
  name: string;
  summary: string;
  /** The synopsis line(s) after `node-image-pivot `. */
  usage: string;
  /** Free text after the option list: what it does, examples, exit codes worth knowing. */
  help: string;
  options: OptionSpec;
  /** Human descriptions of each option, keyed like `options`. */
  optionHelp: Record<string, string>;
  /** How many positionals it takes, with their names for error messages. */
  positionals: { names: string[]; min: number; max: number };
  run(args: ParsedArgs): Promise<number>;
}
