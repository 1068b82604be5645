// pull IMAGE --dest DIR: the registry client's verified blob streams, straight into the unpacker.
// The tree is built in DIR.partial and renamed to DIR only once every layer is in and verified,
// so a failed or killed pull never leaves a plausible-looking DIR behind.
import { existsSync, renameSync, rmSync } from 'node:fs';
import { resolve } from 'node:path';
import { PivotError } from '../errors.ts';
import { log } from '../log.ts';
import { openImage, type RegistryOptions } from '../registry/index.ts';
import { unpackLayers, type LayerSource, type UnpackOptions, type UnpackSummary } from './layers.ts';

export interface PullToDestSummary extends UnpackSummary {
  image: string;
  manifestDigest: string;
  source: string;
  dest: string;
}

export async function pullToDest(ref: string, dest: string, registry: RegistryOptions, unpack: UnpackOptions): Promise<PullToDestSummary> {
  const started = process.hrtime.bigint();
  const dir = resolve(dest);
  if (existsSync(dir)) {
    throw new PivotError('usage', `destination ${dir} already exists`, {
      path: dir,
      fix: 'remove it or choose another --dest; pull never unpacks over an existing tree',
    });
  }
  const partial = `${dir}.partial`;
  // A leftover from an interrupted pull is ours by name and incomplete by definition.
  rmSync(partial, { recursive: true, force: true });
  const image = await openImage(ref, registry);
  try {
    const layers: LayerSource[] = image.layers.map((l) => ({ ...l, open: () => image.openBlob(l) }));
    log().info({ image: image.reference.toString(), manifestDigest: image.manifestDigest, layers: layers.length, dest: dir }, 'unpacking image');
    const summary = await unpackLayers(partial, layers, unpack);
    renameSync(partial, dir);
    return {
      ...summary,
      image: image.reference.toString(),
      manifestDigest: image.manifestDigest,
      source: image.source,
      dest: dir,
      seconds: Number(process.hrtime.bigint() - started) / 1e9,
    };
  } catch (err) {
    rmSync(partial, { recursive: true, force: true });
    throw err;
  } finally {
    await image.close();
  }
}

export function formatPullSummary(s: PullToDestSummary): string {
  return `pulled ${s.image}@${s.manifestDigest} into ${s.dest}: ${s.layers} layers, ${s.compressedBytes} compressed bytes, `
    + `${s.expandedBytes} expanded bytes, ${s.files} files, ${s.dirs} dirs, ${s.symlinks} symlinks, ${s.hardlinks} hardlinks, `
    + `${s.whiteouts} whiteouts${s.devicesSkipped ? `, ${s.devicesSkipped} devices skipped` : ''}, ${s.seconds.toFixed(2)} s\n`;
}
