import type { Command, ParsedArgs } from './types.ts';
import { JSONL_INTERVAL_MS, pullProgress, type Progress } from '../progress.ts';
import { PivotError, asPivotError } from '../errors.ts';
import { registryFlagHelp, registryFlags, registryOptionsFromFlags, stringOpt } from './shared.ts';
import { progressFdOption, progressFor, resultOfError } from './progress-option.ts';

export const pullCommand: Command = {
  name: 'pull',
  summary: 'pull an image from its registry and unpack it into a directory (or an OCI layout)',
  usage: 'pull IMAGE (--dest DIR [--keep-sysroot] | --oci-layout DIR) [--authfile F] [--registries-conf F] [--cert-dir D] [--platform OS/ARCH[/VARIANT]] [--json] [--progress-fd N]',
  help: [
    'DIR is written as DIR.partial and renamed to DIR only when complete.',
    'A bootable image (label ostree.commit or containers.bootc=1) unpacks as bootc imports it: etc/ at',
    'usr/etc/, derived var/ at usr/share/factory/var/, other top-level paths of derived layers dropped',
    'and counted (docs/unpack.md).',
    '--progress-fd writes JSON lines for an installer\'s UI (docs/progress.md), with byte progress and',
    'a subtask per layer (with --oci-layout a layer\'s subtask completes when its blob is verified).',
  ].join('\n'),
  options: {
    dest: { type: 'string' },
    'keep-sysroot': { type: 'boolean' },
    'oci-layout': { type: 'string' },
    ...registryFlags,
    json: { type: 'boolean' },
    ...progressFdOption.options,
  },
  optionHelp: {
    dest: 'unpack the image into this directory',
    'keep-sysroot': "with --dest: keep an ostree-native image's sysroot/ostree repo, as umoci unpack does (default: drop it; the files stay hardlinked under usr/)",
    'oci-layout': 'write a standard OCI image layout (oci-layout, index.json, blobs/) instead',
    ...registryFlagHelp,
    json: 'print the summary as JSON',
    ...progressFdOption.optionHelp,
  },
  positionals: { names: ['IMAGE'], min: 1, max: 1 },
  async run(args) {
    const dest = stringOpt(args.values, 'dest');
    const layout = stringOpt(args.values, 'oci-layout');
    if ((dest === undefined) === (layout === undefined)) {
      throw new PivotError('usage', 'pull: give exactly one of --dest DIR or --oci-layout DIR', { fix: "run 'node-image-pivot pull --help'" });
    }
    if (args.values['keep-sysroot'] === true && dest === undefined) {
      throw new PivotError('usage', 'pull: --keep-sysroot only applies to --dest', { fix: 'drop --keep-sysroot, or unpack with --dest DIR' });
    }
    const progress = progressFor(args.values, 'pull', ['pull']);
    try {
      progress.phase('pull');
      const { summary, text } = dest !== undefined ? await pullDest(args, dest, progress) : await pullLayout(args, layout!, progress);
      progress.phaseEnd('pull', 'done');
      progress.result({ result: 'done', exitCode: 0, digest: summary.manifestDigest });
      await progress.close();
      process.stdout.write(args.values.json ? `${JSON.stringify(summary)}\n` : text);
      return 0;
    } catch (err) {
      const e = asPivotError(err);
      progress.phaseEnd('pull', 'failed');
      progress.result(resultOfError(e));
      await progress.close();
      throw e;
    }
  },
};

interface Pulled { summary: { manifestDigest: string }; text: string }

async function pullDest(args: ParsedArgs, dest: string, progress: Progress): Promise<Pulled> {
  const [{ configSchema }, { formatPullSummary, pullToDest }] = await Promise.all([import('../config.ts'), import('../pull.ts')]);
  const defaults = configSchema.parse({ image: args.positionals[0] });
  const summary = await pullToDest(args.positionals[0]!, dest, registryOptionsFromFlags(args.values), {
    limits: defaults.limits, allowDevices: defaults.allowDevices, keepSysroot: args.values['keep-sysroot'] === true || defaults.keepSysroot, onProgress: pullProgress(progress),
  });
  return { summary, text: formatPullSummary(summary) };
}

async function pullLayout(args: ParsedArgs, layout: string, progress: Progress): Promise<Pulled> {
  const { openImage, writeOciLayout } = await import('../registry/index.ts');
  const started = Date.now();
  const image = await openImage(args.positionals[0]!, registryOptionsFromFlags(args.values));
  // Layers download in parallel, so the bytes come from the transfer counters, sampled; a layer's
  // own bar fills when its blob is verified.
  const layers = [...new Map(image.layers.map((l) => [l.digest, l])).values()];
  const bytesTotal = layers.reduce((n, l) => n + l.size, 0);
  const verified = new Set<string>();
  const report = (): void => {
    const st = image.stats();
    progress.update({
      phase: 'pull', detail: `${verified.size}/${layers.length} layers`, unit: 'bytes', total: bytesTotal,
      done: Math.min(bytesTotal, st.bytesFetched + st.bytesResumed + st.bytesFromCache),
      layers: layers.map((l) => ({ digest: l.digest, bytesTotal: l.size, bytes: verified.has(l.digest) ? l.size : 0 })),
      layerCount: layers.length,
    });
  };
  const sampler = setInterval(report, JSONL_INTERVAL_MS).unref();
  try {
    const result = await writeOciLayout(image, layout, (l) => { verified.add(l.digest); report(); });
    const stats = image.stats();
    const summary = {
      image: image.reference.toString(),
      manifestDigest: image.manifestDigest,
      source: image.source,
      dir: result.dir,
      blobs: result.blobs,
      bytes: result.bytes,
      ...stats,
      seconds: (Date.now() - started) / 1000,
    };
    const text = `pulled ${summary.image}@${summary.manifestDigest} into ${summary.dir} (${summary.blobs} blobs, ${summary.bytes} bytes, ${stats.bytesFetched} fetched, ${summary.seconds}s)\n`;
    return { summary, text };
  } finally {
    clearInterval(sampler);
    await image.close();
  }
}
