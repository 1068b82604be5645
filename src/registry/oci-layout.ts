// Writes an opened image as a standard OCI image layout (oci-layout, index.json, blobs/sha256/),
// the interop proof that what we fetched is exactly what the registry holds. Written to
// DIR.partial and renamed, so DIR either is complete or does not exist.
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PivotError, asPivotError } from '../errors.ts';
import { cachePath, mapLimit } from './blobs.ts';
import type { OpenedImage } from './client.ts';
import { OCI_INDEX } from './manifest.ts';

export interface LayoutResult {
  dir: string;
  tag: string | undefined;
  manifestDigest: string;
  blobs: number;
  bytes: number;
}

/** Called as each layer blob is verified in DIR.partial (for byte progress). */
export type LayerDone = (layer: { digest: string; size: number }) => void;

export async function writeOciLayout(image: OpenedImage, dir: string, onLayerDone?: LayerDone): Promise<LayoutResult> {
  if (existsSync(dir)) {
    throw new PivotError('usage', `${dir} already exists`, { path: dir, fix: 'remove it or choose another --oci-layout directory' });
  }
  const partial = `${dir}.partial`;
  try {
    return await writeInto(image, dir, partial, onLayerDone);
  } catch (err) {
    // A transient failure keeps DIR.partial so that a rerun resumes its verified blobs; after a
    // permanent one (a digest mismatch, a bad manifest) a rerun fails the same way, so nothing
    // is left in place.
    if (asPivotError(err).permanent) await rm(partial, { recursive: true, force: true });
    throw err;
  }
}

async function writeInto(image: OpenedImage, dir: string, partial: string, onLayerDone?: LayerDone): Promise<LayoutResult> {
  const blobDir = join(partial, 'blobs', 'sha256');
  await mkdir(blobDir, { recursive: true });
  // A rerun resumes: verified blobs already in DIR.partial are kept, *.partial ones are resumed.
  // A layer the manifest lists more than once is one file in blobs/, fetched once.
  const layers = [...new Map(image.layers.map((l) => [l.digest, l])).values()];
  const blobs = [image.configDescriptor, ...layers];
  // The config was already fetched and verified by openImage.
  await writeFile(cachePath(blobDir, image.configDescriptor.digest), image.configBytes);
  await mapLimit(layers, image.concurrency, async (b) => {
    const path = await image.fetchBlobToCache(b, blobDir);
    onLayerDone?.(b);
    return path;
  });
  await writeFile(cachePath(blobDir, image.manifestDigest), image.manifestBytes);
  const tag = image.reference.tag ?? (image.reference.digest ? undefined : 'latest');
  const index = {
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: [{
      mediaType: image.manifestMediaType,
      digest: image.manifestDigest,
      size: image.manifestBytes.length,
      platform: image.platform,
      ...(tag ? { annotations: { 'org.opencontainers.image.ref.name': tag } } : {}),
    }],
  };
  await writeFile(join(partial, 'oci-layout'), JSON.stringify({ imageLayoutVersion: '1.0.0' }));
  await writeFile(join(partial, 'index.json'), JSON.stringify(index));
  await rename(partial, dir);
  return { dir, tag, manifestDigest: image.manifestDigest, blobs: blobs.length + 1, bytes: blobs.reduce((n, b) => n + b.size, 0) };
}
