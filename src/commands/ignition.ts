import type { Command } from './types.ts';
import { stringOpt } from './shared.ts';
import { PivotError } from '../errors.ts';
import { checkBinaryUrl, checkCompression, type BinarySource } from '../ignition/build.ts';
import { runningBinary } from '../ignition/binary.ts';

function usage(message: string): PivotError {
  return new PivotError('usage', `ignition: ${message}`, { fix: "run 'node-image-pivot ignition --help'" });
}

export function binarySourceFrom(values: Record<string, unknown>): BinarySource {
  const url = stringOpt(values, 'binary-url');
  const sha = stringOpt(values, 'binary-sha512');
  const embed = values.embed === true;
  const compression = stringOpt(values, 'compression');
  if (embed && (url !== undefined || sha !== undefined)) throw usage('give --embed or --binary-url with --binary-sha512, not both');
  if (embed && compression !== undefined) throw usage('--compression is for --binary-url; --embed always embeds gzip');
  if (embed) return { kind: 'embed', path: runningBinary() };
  if (url === undefined && sha === undefined) throw usage('missing --binary-url with --binary-sha512, or --embed');
  if (url === undefined) throw usage('--binary-sha512 needs --binary-url');
  if (sha === undefined) throw usage('--binary-url needs --binary-sha512 (Ignition verifies what it downloads)');
  return { kind: 'remote', url, sha512: sha, compression: checkCompression(compression ?? 'gzip', checkBinaryUrl(url)) };
}

export const ignitionCommand: Command = {
  name: 'ignition',
  summary: 'emit an Ignition 3.4.0 config that installs the binary, its config, generator and units',
  usage: 'ignition --config FILE (--binary-url URL --binary-sha512 HEX [--compression gzip|none] | --embed) [--output FILE]',
  help: [
    'The config is validated first; a bad config is refused and nothing is written. The binary goes',
    'to /usr/local/bin (outside /usr, so it stays reachable after the pivot), the config to',
    '/etc/node-image-pivot/config.json, the generator to /etc/systemd/system-generators.',
    'With --binary-url, host dist/node-image-pivot.gz (41 MB instead of 113) and keep the default',
    '--compression gzip: Ignition downloads the .gz, decompresses it, and checks the sha512 of the',
    'decompressed binary (spec 3.4.0). So --binary-sha512 is always the uncompressed binary\'s:',
    '  --binary-sha512 $(awk \'$2 == "node-image-pivot" {print $1}\' dist/SHA512SUMS)',
  ].join('\n'),
  options: {
    config: { type: 'string', short: 'c' },
    'binary-url': { type: 'string' },
    'binary-sha512': { type: 'string' },
    compression: { type: 'string' },
    embed: { type: 'boolean' },
    output: { type: 'string', short: 'o' },
  },
  optionHelp: {
    config: 'the node-image-pivot config.json to install',
    'binary-url': 'where Ignition fetches the binary from (node-image-pivot.gz by default)',
    'binary-sha512': "the uncompressed binary's sha512, hex (Ignition verifies it after decompressing)",
    compression: 'gzip (default: the URL serves node-image-pivot.gz) or none (the plain binary)',
    embed: 'embed this binary, gzip-compressed, instead of a URL',
    output: 'write here instead of stdout',
  },
  positionals: { names: [], min: 0, max: 0 },
  async run({ values }) {
    const config = stringOpt(values, 'config');
    if (config === undefined) throw usage('missing --config');
    const binary = binarySourceFrom(values);
    const output = stringOpt(values, 'output');
    const { generateIgnition } = await import('../ignition/generate.ts');
    await generateIgnition({ config, binary, ...(output === undefined ? {} : { output }) });
    return 0;
  },
};
