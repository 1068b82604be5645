// Public API of the unpacker. Keep it stable; callers: src/pull.ts, benches. It knows nothing of
// registries: src/pull.ts joins the registry client to it.
//
//   interface LayerSource { digest; mediaType; size; open(): Promise<Readable> }
//   unpackLayers(dest, layers, { limits, allowDevices, keepSysroot, onProgress? }) -> UnpackSummary
//     Applies the layers in order onto dest (created if missing), rooted and tar-slip-proof.
//     Throws PivotError kinds 'unpack', 'path-safety' or 'limit'; dest is then incomplete and
//     must be discarded (src/pull.ts's pullToDest() does that with DIR.partial).
//   LayerTarget / DirectTarget: the "write one entry" seam; DeltaTarget writes only what
//     differs from the booted /usr (delta staging, docs/delta-staging.md), stageRelabelled
//     stages the files whose booted label the new policy changes, treeDigest is the oracle.
// Design notes and every deliberate difference from umoci: docs/unpack.md.
export { unpackLayers, dropOstreeRepo, type LayerSource, type UnpackOptions, type UnpackProgress, type UnpackSummary } from './layers.ts';
export { DirectTarget, type LayerTarget, type Outcome } from './entry.ts';
export { DeltaTarget, type DeltaStats, type DeltaTargetOptions } from './delta/target.ts';
export { shownFromBooted, stageRelabelled, type BatchLabelLookup } from './delta/labels.ts';
export { digestDiff, treeDigest, type TreeDigest } from './delta/digest.ts';
export { compressionOf, corruptLayerError, decompressionStages, type Compression } from './decompress.ts';
export type { TarEntry, TarEntryType } from './tar.ts';
export { bootcImageOf, type BootcImage } from './bootc.ts';
