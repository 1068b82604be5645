import { createWriteStream, readFileSync, renameSync, rmSync } from 'node:fs';
import { finished } from 'node:stream/promises';
import type { Command } from './types.ts';
import { stringOpt } from './shared.ts';
import { PivotError, isErrno } from '../errors.ts';
import { parseConfig } from '../config.ts';
import { log } from '../log.ts';
import { unitAssets } from '../ignition/assets.ts';
import { buildIgnition, writeIgnition, type BinarySource } from '../ignition/build.ts';
import { runningBinary } from '../ignition/binary.ts';

function usage(message: string): PivotError {
  return new PivotError('usage', `ignition: ${message}`, { fix: "run 'node-image-pivot ignition --help'" });
}

/** Reads and validates the config so that a bad one never ships to a node. Returns its text. */
export function readValidConfig(path: string): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new PivotError('config', `cannot read config ${path}: ${isErrno(err, 'ENOENT') ? 'no such file' : (err as Error).message}`, {
      path, fix: 'pass --config with the config.json to install',
    });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new PivotError('config', `config ${path} is not valid JSON: ${(err as Error).message}`, { path, fix: `fix the JSON syntax in ${path}` });
  }
  parseConfig(json, path);
  return text.endsWith('\n') ? text : `${text}\n`;
}

export function binarySourceFrom(values: Record<string, unknown>): BinarySource {
  const url = stringOpt(values, 'binary-url');
  const sha = stringOpt(values, 'binary-sha512');
  const embed = values.embed === true;
  if (embed && (url !== undefined || sha !== undefined)) throw usage('give --embed or --binary-url with --binary-sha512, not both');
  if (embed) return { kind: 'embed', path: runningBinary() };
  if (url === undefined && sha === undefined) throw usage('missing --binary-url with --binary-sha512, or --embed');
  if (url === undefined) throw usage('--binary-sha512 needs --binary-url');
  if (sha === undefined) throw usage('--binary-url needs --binary-sha512 (Ignition verifies what it downloads)');
  return { kind: 'remote', url, sha512: sha };
}

/** Generates the config into `output` (atomically) or stdout. */
export async function generateIgnition(opts: { config: string; binary: BinarySource; output?: string }): Promise<void> {
  const configText = readValidConfig(opts.config);
  const doc = buildIgnition({ configText, binary: opts.binary, assets: unitAssets() });
  if (opts.output === undefined) {
    await writeIgnition(doc, opts.binary, process.stdout);
    return;
  }
  const tmp = `${opts.output}.tmp-${process.pid}`;
  const out = createWriteStream(tmp, { mode: 0o644 });
  try {
    const r = await writeIgnition(doc, opts.binary, out);
    out.end();
    await finished(out);
    renameSync(tmp, opts.output);
    log().info({ output: opts.output, ...(r.embeddedSha512 ? { sha512: r.embeddedSha512 } : {}) }, `wrote ${opts.output}`);
  } catch (err) {
    out.destroy();
    rmSync(tmp, { force: true });
    throw err;
  }
}

export const ignitionCommand: Command = {
  name: 'ignition',
  summary: 'emit an Ignition 3.4.0 config that installs the binary, its config, generator and units',
  usage: 'ignition --config FILE (--binary-url URL --binary-sha512 HEX | --embed) [--output FILE]',
  help: [
    'The config is validated first; a bad config is refused and nothing is written. The binary goes',
    'to /usr/local/bin (outside /usr, so it stays reachable after the pivot), the config to',
    '/etc/node-image-pivot/config.json, the generator to /etc/systemd/system-generators.',
  ].join('\n'),
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
  async run({ values }) {
    const config = stringOpt(values, 'config');
    if (config === undefined) throw usage('missing --config');
    const binary = binarySourceFrom(values);
    const output = stringOpt(values, 'output');
    await generateIgnition({ config, binary, ...(output === undefined ? {} : { output }) });
    return 0;
  },
};
