// How bootc's importer (containers/bootc crates/ostree-ext) reads a bootable container image,
// as pure rules the layer loop applies. Sources, per rule, in docs/unpack.md:
//   - which image is one: the config labels ostree.commit / containers.bootc=1
//   - where the ostree layers end: ostree.final-diffid names the diff_id of the last one
//     (container/encapsulate.rs); every later layer is a derived layer
//   - etc/ becomes usr/etc/ in every layer, hardlink targets too (tar/write.rs remap_etc_path)
//   - in derived layers (tar/write.rs normalize_validate_path): usr/ stays; var/ goes to
//     usr/share/factory/var/; run, tmp, proc, sys, dev keep their top directory but drop what is
//     in it; any other top-level path is dropped and counted
//   - xattrs of a content object come from its .file-xattrs-link, which precedes the .file
//   - after derived layers, a zero-size usr/etc/hostname or usr/etc/resolv.conf is removed
//     (container/store.rs cleanup_root: container builds leave them behind)
import { PivotError } from '../errors.ts';
import { GVariantError, parseXattrList } from './gvariant.ts';

export interface BootcImage {
  ostreeCommit?: string;
  version?: string;
  bootable: boolean;
  /** Index of the first derived layer (== layer count when there is none). */
  firstDerivedLayer: number;
  layerCount: number;
}

interface ImageConfig {
  config?: { Labels?: Record<string, unknown> | null };
  rootfs?: { diff_ids?: unknown[] };
}

/** undefined for a plain OCI image (no bootc/ostree labels): it unpacks as a runtime would. */
export function bootcImageOf(configBytes: Buffer, layerCount: number): BootcImage | undefined {
  let cfg: ImageConfig;
  try {
    cfg = JSON.parse(configBytes.toString('utf8')) as ImageConfig;
  } catch {
    return undefined;
  }
  const labels = cfg.config?.Labels ?? {};
  const label = (k: string): string | undefined => (typeof labels[k] === 'string' ? labels[k] : undefined);
  const ostreeCommit = label('ostree.commit');
  if (!ostreeCommit && label('containers.bootc') !== '1') return undefined;
  const version = label('org.opencontainers.image.version') ?? label('version');
  const finalDiffId = label('ostree.final-diffid');
  let firstDerivedLayer: number;
  if (finalDiffId) {
    const diffIds = cfg.rootfs?.diff_ids ?? [];
    const at = diffIds.indexOf(finalDiffId);
    if (at < 0) {
      throw new PivotError('verification', `image config label ostree.final-diffid ${finalDiffId} names no layer of the image`, {
        field: 'config.Labels["ostree.final-diffid"]',
        fix: 'the image was rewritten without updating its labels: rebuild it (ostree container encapsulate / bootc)',
        permanent: true,
      });
    }
    firstDerivedLayer = at + 1;
  } else {
    // An unchunked ostree export is one layer; a bootc image without ostree objects (chunkah)
    // is all derived layers.
    firstDerivedLayer = ostreeCommit ? 1 : 0;
  }
  return {
    ...(ostreeCommit ? { ostreeCommit } : {}),
    ...(version ? { version } : {}),
    bootable: label('ostree.bootable') === 'true' || label('containers.bootc') === '1',
    firstDerivedLayer: Math.min(firstDerivedLayer, layerCount),
    layerCount,
  };
}

export type PathDecision = { keep: string[] } | { drop: string };
const API_DIRS = new Set(['run', 'tmp', 'proc', 'sys', 'dev']);

const remapEtc = (comps: readonly string[]): string[] => (comps[0] === 'etc' ? ['usr', ...comps] : [...comps]);

/** Where an entry of an ostree (derived = false) or derived layer lands, or its dropped top. */
export function bootcPath(comps: readonly string[], derived: boolean): PathDecision {
  const top = comps[0];
  if (top === undefined || !derived) return { keep: remapEtc(comps) };
  if (top === 'usr' || top === 'etc') return { keep: remapEtc(comps) };
  if (top === 'var') return { keep: ['usr', 'share', 'factory', 'var', ...comps.slice(1)] };
  if (API_DIRS.has(top)) return comps.length === 1 ? { keep: [top] } : { drop: top };
  return { drop: top };
}

/** Hardlink targets get the etc mapping only, as in bootc (a link into var/ stays var/). */
export const bootcLinkTarget = remapEtc;

/** Files container builds leave behind, removed when they are empty and derived layers exist. */
export const RUNTIME_INJECTED = ['usr/etc/hostname', 'usr/etc/resolv.conf'];

/** ostree-ext's cap on one xattr object. */
export const MAX_XATTRS_OBJECT = 1024 * 1024;
/**
 * Shared .file-xattrs objects are kept in memory for the links after them. An OS image has a few
 * hundred distinct xattr sets of tens of bytes each; this bounds what a hostile image can pin.
 */
export const MAX_SHARED_XATTRS_BYTES = 64 * 1024 * 1024;
const OBJECT = /^([0-9a-f]{62})\.(file|file-xattrs|file-xattrs-link)$/;

export interface RepoObject { csum: string; ext: 'file' | 'file-xattrs' | 'file-xattrs-link' }

/** sysroot/ostree/repo/objects/XX/<62 hex>.{file,file-xattrs,file-xattrs-link}, else undefined. */
export function repoObjectOf(comps: readonly string[]): RepoObject | undefined {
  if (comps.length !== 6 || comps[0] !== 'sysroot' || comps[1] !== 'ostree' || comps[2] !== 'repo' || comps[3] !== 'objects') return undefined;
  const dir = comps[4]!;
  const m = OBJECT.exec(comps[5]!);
  if (!/^[0-9a-f]{2}$/.test(dir) || !m) return undefined;
  return { csum: dir + m[1]!, ext: m[2] as RepoObject['ext'] };
}

function objectError(what: string, path: string): PivotError {
  return new PivotError('unpack', what, {
    path,
    fix: 'the ostree-native layer is malformed: rebuild the image (ostree container encapsulate / bootc)',
    permanent: true,
  });
}

/** Checks an xattr object's declared size before a byte of it is read. */
export function checkXattrsSize(size: number, path: string): void {
  if (size > MAX_XATTRS_OBJECT) throw objectError(`xattr object ${JSON.stringify(path)} is ${size} bytes, over ostree-ext's ${MAX_XATTRS_OBJECT}-byte limit`, path);
}

export function parseXattrsObject(variant: Buffer, path: string): Map<string, Buffer> {
  try {
    return parseXattrList(variant);
  } catch (err) {
    if (err instanceof GVariantError) throw objectError(`xattr object ${JSON.stringify(path)} is not a valid a(ayay) GVariant (${err.why})`, path);
    throw err;
  }
}

/**
 * Pairs each .file-xattrs-link with the .file that must come right after it, and remembers the
 * shared .file-xattrs objects the pre-2025 links point at. One per image.
 */
export class XattrLinks {
  private readonly shared = new Map<string, Map<string, Buffer>>();
  private pending: { csum: string; path: string; xattrs: Map<string, Buffer> } | undefined;
  private sharedBytes = 0;
  objects = 0;

  sharedObject(rel: string, variant: Buffer): void {
    this.sharedBytes += variant.length;
    if (this.sharedBytes > MAX_SHARED_XATTRS_BYTES) {
      throw objectError(`the image's shared xattr objects exceed ${MAX_SHARED_XATTRS_BYTES} bytes at ${JSON.stringify(rel)}`, rel);
    }
    this.shared.set(rel, parseXattrsObject(variant, rel));
  }

  /** A link holding its variant (2025-09 on), or a hardlink to a shared object (`target`). */
  link(obj: RepoObject, path: string, from: { variant: Buffer } | { target: string }): void {
    this.expectNone();
    let xattrs: Map<string, Buffer> | undefined;
    if ('variant' in from) xattrs = parseXattrsObject(from.variant, path);
    else {
      xattrs = this.shared.get(from.target);
      if (!xattrs) throw objectError(`xattr link ${JSON.stringify(path)} points to ${JSON.stringify(from.target)}, which is not an xattr object in the image`, path);
    }
    this.pending = { csum: obj.csum, path, xattrs };
    this.objects++;
  }

  /** The xattrs for this entry: its own (PAX) unless a link for its object came just before. */
  forEntry(obj: RepoObject | undefined, pax: Map<string, Buffer>): Map<string, Buffer> {
    if (!this.pending) return pax;
    const p = this.pending;
    if (obj?.ext !== 'file' || obj.csum !== p.csum) this.expectNone();
    this.pending = undefined;
    const merged = new Map(pax);
    // security.selinux is left to the selinux phase, which labels with the new image's policy;
    // the booted kernel may not even know the label.
    for (const [k, v] of p.xattrs) if (k !== 'security.selinux') merged.set(k, v);
    return merged;
  }

  /** Throws when a link is still waiting for its .file (another entry, or the layer's end). */
  expectNone(): void {
    if (this.pending) throw objectError(`xattr link ${JSON.stringify(this.pending.path)} is not followed by its .file object`, this.pending.path);
  }
}
