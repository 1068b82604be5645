// The registry client's public API. Other modules import from here only; keep it stable.
//
//   parseReference(text, { unqualifiedSearch? }) -> ImageReference { registry, repository, tag?, digest?, toString() }
//     Malformed input throws PivotError 'usage' (exit 2) naming the bad character and its index.
//
//   openImage(ref, RegistryOptions) -> OpenedImage
//     Resolves registries.conf mirrors (blocked -> 'usage'), auth, TLS/proxy; fetches and verifies
//     the manifest (platform from an index per opts.platform or the host) and the config.
//     OpenedImage.layers are in manifest order (bottom first). openBlob(layer) gives a verified
//     stream ('verification', exit 4, at the end on a digest/size mismatch; Range-resumed on
//     connection breaks; served from opts.cacheDir when the blob is there). To fill the cache with
//     N blobs at once: mapLimit(image.layers, image.concurrency, (l) => image.fetchBlobToCache(l)),
//     then openBlob reads from the cache. Call close() when done (releases connections).
//
//   resolveComponent(releaseImage, component, RegistryOptions) -> { pullspec, bytesFetched, imageBytes }
//     Reads release-manifests/image-references top-down and stops at the first layer holding it.
//
//   writeOciLayout(image, dir) writes a standard OCI layout via DIR.partial + rename.
//
// Errors: 'auth' (401/403, names registry and auth file), 'registry' (404/5xx/bad manifests),
// 'network' (says DNS, connect or TLS), 'verification' (names the blob), 'usage'.
export { parseReference, type ImageReference } from './reference.ts';
export { openImage, type OpenedImage, type RegistryOptions } from './client.ts';
export { mapLimit, type LayerDescriptor, type BlobStats } from './blobs.ts';
export { resolveComponent, type ResolvedComponent } from './release.ts';
export { writeOciLayout, type LayoutResult } from './oci-layout.ts';
export { hostPlatform, parsePlatform, platformString, type Platform } from './manifest.ts';
