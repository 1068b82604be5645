// Writing an Ignition config: validate the agent's config, assemble the document, stream it out.
import { createWriteStream, renameSync, rmSync } from 'node:fs';
import { finished } from 'node:stream/promises';
import { parseConfigText, readConfigText } from '../config.ts';
import { log } from '../log.ts';
import { unitAssets } from './assets.ts';
import { buildIgnition, writeIgnition, type BinarySource } from './build.ts';

/** Reads and validates the config so that a bad one never ships to a node. Returns its text. */
export function readValidConfig(path: string): string {
  const text = readConfigText(path);
  parseConfigText(text, path);
  return text.endsWith('\n') ? text : `${text}\n`;
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
