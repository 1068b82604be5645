import type { Command } from './types.ts';
import { notImplemented } from './shared.ts';

export const etcMergeCommand: Command = {
  name: 'etc-merge',
  summary: '3-way merge of /etc (ostree semantics): old defaults, live /etc, new defaults',
  usage: 'etc-merge --base DIR --current DIR --new DIR [--dry-run] [--json]',
  help: 'Local changes win. A conflict changes nothing and exits 7 with the path.',
  options: {
    base: { type: 'string' },
    current: { type: 'string' },
    new: { type: 'string' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
  },
  optionHelp: {
    base: "the booted image's defaults (/usr/etc)",
    current: 'the live /etc, changed in place',
    new: "the new image's defaults (its usr/etc, or etc)",
    'dry-run': 'print the plan and change nothing',
    json: 'print the plan or the result as JSON',
  },
  positionals: { names: [], min: 0, max: 0 },
  async run() {
    notImplemented('etc-merge');
  },
};
