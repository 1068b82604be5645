// --progress-fd N for run and pull: the option, and the Progress that writes JSON lines to N.
import type { OptionSpec } from './types.ts';
import { stringOpt } from './shared.ts';
import type { PivotError } from '../errors.ts';
import { Progress } from '../progress.ts';
import { JsonlProgressWriter, parseProgressFd, type ProgressResult } from '../progress-jsonl.ts';

export const progressFdOption: { options: OptionSpec; optionHelp: Record<string, string> } = {
  options: { 'progress-fd': { type: 'string' } },
  optionHelp: { 'progress-fd': 'write progress as JSON lines to this open fd (3 or more; docs/progress.md)' },
};

/** The command's Progress; with --progress-fd it also writes the JSON lines. */
export function progressFor(values: Record<string, unknown>, command: string, steps: readonly string[]): Progress {
  const text = stringOpt(values, 'progress-fd');
  if (text === undefined) return new Progress();
  const writer = new JsonlProgressWriter(parseProgressFd(text));
  return new Progress({ jsonl: { writer, command, steps, id: command } });
}

export function resultOfError(e: PivotError): ProgressResult {
  return {
    result: 'failed', exitCode: e.exitCode,
    error: { kind: e.kind, message: e.message, fix: e.fix, line: e.oneLine(), ...(e.path ? { path: e.path } : {}), ...(e.field ? { field: e.field } : {}) },
  };
}
