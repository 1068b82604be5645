// Manifests: what we accept (OCI index/manifest, Docker list/schema2), what we refuse (schema1,
// unknown types, oversized documents) and platform selection. Everything here is pure.
import { listSome, PivotError } from '../errors.ts';
import { compressionOf } from '../unpack/decompress.ts';
import type { LayerDescriptor } from './blobs.ts';
import { MAX_LAYERS } from './bounds.ts';

export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_SCHEMA1 = 'application/vnd.docker.distribution.manifest.v1+json';
export const DOCKER_SCHEMA1_SIGNED = 'application/vnd.docker.distribution.manifest.v1+prettyjws';

/** Schema1 types are listed so that a registry hands them over and we can refuse them by name. */
export const MANIFEST_ACCEPT = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST, `${DOCKER_SCHEMA1_SIGNED};q=0.1`, `${DOCKER_SCHEMA1};q=0.1`].join(', ');

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface Descriptor extends LayerDescriptor {
  platform?: Platform;
  annotations?: Record<string, string>;
}

export type ParsedManifest =
  | { kind: 'index'; mediaType: string; manifests: Descriptor[] }
  | { kind: 'image'; mediaType: string; config: Descriptor; layers: Descriptor[] };

function bad(what: string, message: string, fix = 'rebuild or re-push the image with an OCI or Docker schema2 manifest'): PivotError {
  return new PivotError('registry', `${what}: ${message}`, { fix, permanent: true });
}

const DIGEST = /^sha256:[a-f0-9]{64}$/;

function descriptor(v: unknown, what: string, field: string): Descriptor {
  const d = v as Partial<Descriptor> | undefined;
  if (!d || typeof d !== 'object') throw bad(what, `${field} is not a descriptor`);
  if (typeof d.digest !== 'string' || !DIGEST.test(d.digest)) throw bad(what, `${field}.digest ${JSON.stringify(d.digest)} is not a sha256 digest`);
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw bad(what, `${field}.size is not a non-negative integer`);
  if (typeof d.mediaType !== 'string') throw bad(what, `${field}.mediaType is missing`);
  return d as Descriptor;
}

/** The media type to trust: the Content-Type unless it is generic, then the document's own. */
export function effectiveMediaType(contentType: string | undefined, doc: { mediaType?: unknown; schemaVersion?: unknown }): string {
  const ct = (contentType ?? '').split(';')[0]!.trim().toLowerCase();
  if (doc.schemaVersion === 1) return DOCKER_SCHEMA1;
  if (ct && ct !== 'application/json' && ct !== 'text/plain' && ct !== 'application/octet-stream') return ct;
  if (typeof doc.mediaType === 'string') return doc.mediaType;
  // OCI allows mediaType to be absent; the shape decides.
  return 'manifests' in doc ? OCI_INDEX : OCI_MANIFEST;
}

/** Parses manifest bytes; refuses schema1, unknown media types and unsupported layers. */
export function parseManifest(bytes: Buffer, contentType: string | undefined, what: string): ParsedManifest {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(bytes.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw bad(what, 'is not valid JSON');
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw bad(what, 'is not a JSON object');
  const mediaType = effectiveMediaType(contentType, doc);
  if (mediaType === DOCKER_SCHEMA1 || mediaType === DOCKER_SCHEMA1_SIGNED) {
    throw bad(what, 'is a Docker schema1 manifest, which is deprecated and not supported', 're-push the image with a current tool (podman, skopeo, buildah or docker) so it gets a schema2 or OCI manifest');
  }
  if (mediaType === OCI_INDEX || mediaType === DOCKER_LIST) {
    if (!Array.isArray(doc.manifests)) throw bad(what, 'index has no manifests list');
    return { kind: 'index', mediaType, manifests: doc.manifests.map((m, i) => descriptor(m, what, `manifests[${i}]`)) };
  }
  if (mediaType === OCI_MANIFEST || mediaType === DOCKER_MANIFEST) {
    const config = descriptor(doc.config, what, 'config');
    if (!Array.isArray(doc.layers)) throw bad(what, 'has no layers list');
    if (doc.layers.length > MAX_LAYERS) {
      throw bad(what, `lists ${doc.layers.length} layers, over the limit of ${MAX_LAYERS} (overlayfs stacks at most 500)`, 'rebuild the image with fewer layers (squash some)');
    }
    const layers = doc.layers.map((l, i) => descriptor(l, what, `layers[${i}]`));
    layers.forEach((l, i) => {
      try {
        compressionOf(l.mediaType);
      } catch {
        throw bad(what, `layers[${i}] has unsupported media type ${JSON.stringify(l.mediaType)}`, 'rebuild the image with gzip, zstd or uncompressed tar layers');
      }
    });
    return { kind: 'image', mediaType, config, layers };
  }
  throw bad(what, `has unsupported media type ${JSON.stringify(mediaType)}`);
}

const ARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', s390x: 's390x', ppc64: 'ppc64le', ia32: '386', riscv64: 'riscv64' };

export function hostPlatform(): Platform {
  const architecture = ARCH[process.arch] ?? process.arch;
  if (architecture === 'arm64') return { os: 'linux', architecture, variant: 'v8' };
  if (architecture === 'arm') {
    const v = (process.config.variables as unknown as Record<string, unknown>).arm_version;
    return { os: 'linux', architecture, variant: `v${String(v ?? '7')}` };
  }
  return { os: 'linux', architecture };
}

export function parsePlatform(text: string): Platform {
  const m = /^([a-z0-9]+)\/([a-z0-9_]+)(?:\/([a-z0-9]+))?$/.exec(text);
  if (!m) {
    throw new PivotError('usage', `invalid platform ${JSON.stringify(text)}`, { field: 'platform', fix: 'write it as OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8' });
  }
  return { os: m[1]!, architecture: m[2]!, ...(m[3] ? { variant: m[3] } : {}) };
}

export function platformString(p: Platform | undefined): string {
  if (!p) return 'unknown';
  return `${p.os}/${p.architecture}${p.variant ? `/${p.variant}` : ''}`;
}

/** arm64 images usually omit the v8 variant; treat the two as the same. */
function variantOf(p: Platform): string | undefined {
  return p.variant ?? (p.architecture === 'arm64' ? 'v8' : undefined);
}

/** Pure: the manifest for `wanted`, or an error listing what the index offers. */
export function selectPlatform(manifests: Descriptor[], wanted: Platform, what: string, explicit: boolean): Descriptor {
  const candidates = manifests.filter((m) => m.platform && m.platform.os === wanted.os && m.platform.architecture === wanted.architecture);
  const wantedVariant = variantOf(wanted);
  const exact = candidates.find((m) => variantOf(m.platform!) === wantedVariant);
  const chosen = exact ?? (explicit && wanted.variant ? undefined : candidates[0]);
  if (chosen) return chosen;
  const all = manifests.filter((m) => m.platform && m.platform.architecture !== 'unknown').map((m) => platformString(m.platform));
  // An index can list thousands of platforms: the line an operator reads names a few.
  const available = listSome([...new Set(all)]);
  throw new PivotError('registry', `${what} has no image for ${platformString(wanted)}; available: ${available.text || 'none'}`, {
    field: 'platform',
    fix: explicit ? `pass --platform with one of: ${available.text}` : 'pass --platform to pick one of the available platforms',
    facts: { wanted: platformString(wanted), available: available.shown, availableCount: available.total },
    permanent: true,
    reason: 'no-platform',
  });
}
