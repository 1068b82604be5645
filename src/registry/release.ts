// Release image resolve: the pullspec of one component, read from the ImageStream JSON at
// release-manifests/image-references. Layers are read from the top down until one has the file;
// that layer is read to its end through the digest check before the file is used (a forged
// layer must not pick the node image), and no layer below it is fetched at all.
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Header } from 'tar-stream';
import { listSome, PivotError } from '../errors.ts';
import { failpoint } from '../failpoints.ts';
import { log } from '../log.ts';
import { corruptLayerError, decompressionStages } from '../unpack/decompress.ts';
import { createTarExtract } from '../unpack/tar.ts';
import type { LayerDescriptor } from './blobs.ts';
import { openImage, type RegistryOptions } from './client.ts';

export const IMAGE_REFERENCES = 'release-manifests/image-references';
const MAX_REFERENCES_BYTES = 16 * 1024 * 1024;
/** Decompression bounds while searching a layer, as unpack's defaults (limits.maxExpansionRatio). */
export const RESOLVE_MAX_EXPANSION_RATIO = 100;
export const RESOLVE_RATIO_GRACE_BYTES = 64 * 1024 * 1024;
/** No release image layer comes near this expanded; a layer that does is refused. */
export const RESOLVE_MAX_LAYER_EXPANDED_BYTES = 4 * 1024 ** 3;

export interface ResolvedComponent {
  pullspec: string;
  bytesFetched: number;
  imageBytes: number;
  releaseDigest: string;
}

/** Pure: the component's pullspec from an ImageStream document. */
export function componentPullspec(doc: unknown, component: string, where: string): string {
  const tags = (doc as { spec?: { tags?: Array<{ name?: string; from?: { kind?: string; name?: string } }> } })?.spec?.tags;
  if (!Array.isArray(tags)) {
    throw new PivotError('registry', `${where} is not an ImageStream with spec.tags`, { fix: 'check that the image is a release image', permanent: true });
  }
  const hit = tags.find((t) => t.name === component);
  if (!hit?.from?.name) {
    const names = listSome(tags.map((t) => t.name).filter((n): n is string => typeof n === 'string' && n !== '').sort());
    throw new PivotError('usage', `release image has no component ${JSON.stringify(component)}; it has: ${names.text}`, {
      field: 'component',
      fix: `set component to one of the listed names (the node image is usually rhel-coreos)`,
      facts: { component, available: names.shown, availableCount: names.total },
    });
  }
  return hit.from.name;
}

const normalise = (name: string): string => name.replace(/^(\.\/|\/)+/, '');

function resolveLimit(label: string, message: string, facts: Record<string, unknown>): PivotError {
  return new PivotError('limit', `layer ${label} ${message}: decompression bomb?`, {
    fix: 'check the release image: no genuine release layer expands like this',
    facts: { layer: label, ...facts },
  });
}

/** Fails the parse once a layer expands past the resolve bounds. */
function expansionBound(label: string, bytesIn: () => number): Transform {
  let out = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      out += chunk.length;
      const inBytes = Math.max(bytesIn(), 1);
      if (out > RESOLVE_MAX_LAYER_EXPANDED_BYTES) return cb(resolveLimit(label, `expands beyond ${RESOLVE_MAX_LAYER_EXPANDED_BYTES} bytes`, { layerOut: out }));
      if (out > RESOLVE_RATIO_GRACE_BYTES && out > RESOLVE_MAX_EXPANSION_RATIO * inBytes) {
        return cb(resolveLimit(label, `expands more than ${RESOLVE_MAX_EXPANSION_RATIO}x (${out} bytes from ${inBytes})`, { layerIn: inBytes, layerOut: out }));
      }
      cb(null, chunk);
    },
  });
}

const settled = (stream: PassThrough): Promise<void> => new Promise((resolve) => {
  const done = (): void => { stream.off('drain', done); stream.off('close', done); resolve(); };
  stream.on('drain', done);
  stream.on('close', done);
});

/**
 * Looks for the file in one verified layer stream; its bytes, or undefined when absent. The tar
 * parser stops at the file, but the blob is read to its end either way: only a blob that passed
 * its digest check yields what was found, and a mismatch (exit 4) outranks a parse error.
 */
async function findInLayer(blob: Readable, layer: LayerDescriptor): Promise<Buffer | undefined> {
  const label = layer.digest;
  const ex = createTarExtract(label);
  let found: Buffer | undefined;
  ex.on('entry', (header: Header, stream, next) => {
    if (found === undefined && header.type === 'file' && normalise(header.name) === IMAGE_REFERENCES) {
      if ((header.size ?? 0) > MAX_REFERENCES_BYTES) {
        ex.destroy(new PivotError('registry', `${IMAGE_REFERENCES} in layer ${label} is over 16 MiB`, { fix: 'check the release image', permanent: true }));
        return;
      }
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => { chunks.push(c as Buffer); });
      stream.on('end', () => {
        found = Buffer.concat(chunks);
        // The parser is done; the rest of the blob is only hashed.
        ex.destroy();
      });
      stream.on('error', (e) => ex.destroy(e));
      return;
    }
    stream.on('end', () => next());
    // Destroying the parser mid-entry (a bound hit) errors this stream too; the pipeline reports it.
    stream.on('error', () => undefined);
    stream.resume();
  });
  let bytesIn = 0;
  let parseError: unknown;
  const head = new PassThrough();
  const parsed = pipeline([head, ...decompressionStages(layer.mediaType, label), expansionBound(label, () => bytesIn), ex])
    .catch((err: unknown) => { if (found === undefined) parseError = corruptLayerError(err, label); });
  try {
    for await (const chunk of blob) {
      bytesIn += (chunk as Buffer).length;
      if (head.destroyed || head.writableEnded) continue;
      if (!head.write(chunk)) await settled(head);
    }
    head.end();
  } catch (err) {
    head.destroy();
    await parsed;
    throw err;
  } finally {
    blob.destroy();
  }
  await parsed;
  if (parseError !== undefined) throw parseError;
  return found;
}

export async function resolveComponent(releaseImage: string, component: string, opts: RegistryOptions): Promise<ResolvedComponent> {
  const image = await openImage(releaseImage, opts);
  try {
    const imageBytes = image.layers.reduce((n, l) => n + l.size, 0);
    for (let i = image.layers.length - 1; i >= 0; i--) {
      const layer = image.layers[i]!;
      failpoint('registry.resolve');
      const blob = await image.openBlob(layer);
      const bytes = await findInLayer(blob, layer);
      if (bytes === undefined) continue;
      let doc: unknown;
      try {
        doc = JSON.parse(bytes.toString('utf8'));
      } catch {
        throw new PivotError('registry', `${IMAGE_REFERENCES} in layer ${layer.digest} is not valid JSON`, { fix: 'check the release image', permanent: true });
      }
      const pullspec = componentPullspec(doc, component, `${IMAGE_REFERENCES} in ${image.reference.toString()}`);
      const { bytesFetched } = image.stats();
      log().info({ release: image.reference.toString(), component, pullspec, layer: layer.digest, bytesFetched, imageBytes }, 'release component resolved');
      return { pullspec, bytesFetched, imageBytes, releaseDigest: image.manifestDigest };
    }
    throw new PivotError('registry', `${image.reference.toString()} has no ${IMAGE_REFERENCES}; it is not a release image`, {
      fix: 'set releaseImage to an OpenShift/OKD release image, or set image to the node image directly',
      permanent: true,
    });
  } finally {
    await image.close();
  }
}
