// Release image resolve: the pullspec of one component, read from the ImageStream JSON at
// release-manifests/image-references. Layers are streamed from the top down and the download
// stops at the first layer that has the file, so only a fraction of the image is ever fetched.
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { extract, type Header } from 'tar-stream';
import { PivotError } from '../errors.ts';
import { failpoint } from '../failpoints.ts';
import { log } from '../log.ts';
import { corruptLayerError, decompressionStages } from '../unpack/decompress.ts';
import { openImage, type RegistryOptions } from './client.ts';

export const IMAGE_REFERENCES = 'release-manifests/image-references';
const MAX_REFERENCES_BYTES = 16 * 1024 * 1024;

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
    const names = tags.map((t) => t.name).filter(Boolean).sort();
    throw new PivotError('usage', `release image has no component ${JSON.stringify(component)}; it has: ${names.join(', ')}`, {
      field: 'component',
      fix: `set component to one of the listed names (the node image is usually rhel-coreos)`,
      facts: { component, available: names },
    });
  }
  return hit.from.name;
}

const normalise = (name: string): string => name.replace(/^(\.\/|\/)+/, '');

/** Looks for the file in one layer stream; resolves its bytes, or undefined when absent. */
async function findInLayer(blob: Readable, mediaType: string, label: string): Promise<Buffer | undefined> {
  const ex = extract();
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
        // Stop here: the rest of the layer, and every lower layer, is never downloaded.
        ex.destroy();
      });
      stream.on('error', (e) => ex.destroy(e));
      return;
    }
    stream.on('end', () => next());
    stream.resume();
  });
  try {
    await pipeline([blob, ...decompressionStages(mediaType, label), ex]);
  } catch (err) {
    if (found !== undefined) return found;
    throw corruptLayerError(err, label);
  } finally {
    blob.destroy();
  }
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
      const bytes = await findInLayer(blob, layer.mediaType, layer.digest);
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
