import type { Command } from './types.ts';
import { notImplemented } from './shared.ts';

export const ignitionCommand: Command = {
  name: 'ignition',
  summary: 'emit an Ignition 3.4.0 config that installs the binary, its config, generator and units',
  usage: 'ignition --config FILE (--binary-url URL --binary-sha512 HEX | --embed) [--output FILE]',
  help: '',
  options: {
    config: { type: 'string', short: 'c' },
    'binary-url': { type: 'string' },
    'binary-sha512': { type: 'string' },
    embed: { type: 'boolean' },
    output: { type: 'string', short: 'o' },
  },
  optionHelp: {
    config: 'the node-image-pivot config.json to install',
    'binary-url': 'where Ignition fetches the binary from',
    'binary-sha512': "the binary's sha512, hex (Ignition verifies it)",
    embed: 'embed this binary, gzip-compressed, instead of a URL',
    output: 'write here instead of stdout',
  },
  positionals: { names: [], min: 0, max: 0 },
  async run() {
    notImplemented('ignition');
  },
};
