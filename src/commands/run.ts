import type { Command } from './types.ts';
import { notImplemented } from './shared.ts';

export const runCommand: Command = {
  name: 'run',
  summary: 'pivot this node: resolve, pull, unpack, merge /etc, mount /usr, refresh systemd, isolate',
  usage: 'run [--config FILE] [--no-isolate] [--dry-run]',
  help: [
    'Reads /etc/node-image-pivot/config.json unless --config is given. Exits 0 when the pivot is',
    'done or not needed (already done this boot, or a skipIfPathExists path exists).',
  ].join('\n'),
  options: {
    config: { type: 'string', short: 'c' },
    'no-isolate': { type: 'boolean' },
    'dry-run': { type: 'boolean' },
  },
  optionHelp: {
    config: 'config file (default: /etc/node-image-pivot/config.json)',
    'no-isolate': 'service mode: stop after the systemd refresh, do not isolate',
    'dry-run': 'print the plan (image, digest, sizes, /etc actions, conflicts) and change nothing',
  },
  positionals: { names: [], min: 0, max: 0 },
  async run() {
    notImplemented('run (the pivot)');
  },
};
