// Applies image layers in order onto a destination directory: decompress, parse, classify each
// entry (whiteout, opaque whiteout, or something to write), enforce the limits, count.
// Backpressure runs end to end: the layer stream, the inflater and the tar parser form one
// pipeline, and the parser only moves on once the entry loop has consumed the current entry.
import { lstatSync, mkdirSync, rmSync, unlinkSync } from 'node:fs';
import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Config } from '../config.ts';
import { PivotError } from '../errors.ts';
import { failpoint } from '../failpoints.ts';
import { bytesMoved } from '../gc-pacer.ts';
import { log } from '../log.ts';
import {
  RUNTIME_INJECTED, XattrLinks, bootcLinkTarget, bootcPath, checkXattrsSize, repoObjectOf, type BootcImage, type RepoObject,
} from './bootc.ts';
import { corruptLayerError, decompressionStages } from './decompress.ts';
import { declareFactoryVar, FACTORY_VAR_TMPFILES } from './factory-var.ts';
import { DirectTarget, type LayerTarget } from './entry.ts';
import { cleanComponents, hostPath, joinRel } from './safepath.ts';
import { createTarExtract, toTarEntry, type TarEntry } from './tar.ts';

/** A layer blob: the registry client's verified streams fit this, and so do local files. */
export interface LayerSource {
  digest: string;
  mediaType: string;
  size: number;
  open(): Promise<Readable>;
}

export interface UnpackProgress {
  /** 1-based index of the layer being applied. */
  layer: number;
  layers: number;
  /** Compressed bytes read so far, all layers, and their total. */
  bytesIn: number;
  bytesTotal: number;
  /** The layer being applied, and the compressed bytes read of it so far. */
  digest: string;
  size: number;
  layerBytesIn: number;
  entries: number;
}

export interface UnpackOptions {
  limits: Config['limits'];
  allowDevices: boolean;
  keepSysroot: boolean;
  onProgress?(p: UnpackProgress): void;
  /** Replaces the direct writer (delta mode, tests). */
  target?: LayerTarget;
  /** Makes the writer for the directory the unpack writes into (pull builds in DIR.partial). */
  targetAt?: (dest: string) => LayerTarget;
  /** A bootable (bootc / ostree-native) image: unpack it as bootc's importer does (bootc.ts). */
  bootc?: BootcImage;
}

export interface UnpackSummary {
  layers: number;
  entries: number;
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  whiteouts: number;
  devicesSkipped: number;
  /** bootc images: entries of derived layers dropped, by top-level name (as bootc filters them). */
  filtered: Record<string, number>;
  /** bootc images: content objects whose xattrs came from a .file-xattrs-link. */
  xattrLinks: number;
  /** bootc images: empty usr/etc/hostname and usr/etc/resolv.conf left by container builds, removed. */
  runtimeInjectedRemoved: string[];
  /** bootc images: entries under usr/share/factory/var declared for systemd-tmpfiles (factory-var.ts). */
  factoryVarEntries: number;
  /** Bytes of regular-file content written. */
  expandedBytes: number;
  compressedBytes: number;
  seconds: number;
}

/** Ratio checks start once a layer has expanded this far, so small layers never trip them. */
export const RATIO_GRACE_BYTES = 64 * 1024 * 1024;
const OPAQUE = '.wh..wh..opq';
const WHITEOUT = '.wh.';
const PROGRESS_EVERY = 1000;

function limitError(what: string, field: string, facts: Record<string, unknown>): PivotError {
  return new PivotError('limit', what, {
    field: `limits.${field}`,
    fix: `if the image is genuine, raise limits.${field} in the config; otherwise do not use this image`,
    facts,
  });
}

function counter(onChunk: (n: number) => void): Transform {
  return new Transform({
    transform(chunk: Buffer, _enc, cb: TransformCallback) {
      try {
        onChunk(chunk.length);
      } catch (err) {
        cb(err as Error);
        return;
      }
      cb(null, chunk);
    },
  });
}

/** tar-stream's plain Errors, turned into one line that names the layer. */
function tarError(err: unknown, label: string): unknown {
  const mapped = corruptLayerError(err, label);
  if (mapped !== err || err instanceof PivotError || !(err instanceof Error)) return mapped;
  if (/tar header|Unexpected end of data|Invalid header|Header exceeds max size/.test(err.message)) {
    return new PivotError('unpack', `layer ${label}: tar stream is corrupt, truncated or has trailing garbage (${err.message})`, {
      fix: 'pull again; if it repeats, the layer in the registry is damaged or malformed',
      facts: { layer: label },
      cause: err,
    });
  }
  return err;
}

/** A failed syscall on one entry, named: ENAMETOOLONG, ENOSPC, EPERM and friends. */
function entryError(err: unknown, name: string, label: string): unknown {
  // Only real syscall failures; stream errors (a truncated layer) are reported by the pipeline.
  if (err instanceof PivotError || typeof (err as NodeJS.ErrnoException)?.syscall !== 'string') return err;
  const e = err as NodeJS.ErrnoException;
  const fix = e.code === 'ENOSPC' ? 'free space on the destination filesystem or raise its size'
    : e.code === 'ENAMETOOLONG' ? 'use a shorter destination directory: the host path must fit in 4096 bytes'
      : 'check the destination filesystem and permissions (run as root)';
  return new PivotError('unpack', `layer ${label}: cannot write ${JSON.stringify(name.slice(0, 300))}: ${e.code} in ${e.syscall}`, {
    path: name.slice(0, 300),
    fix,
    facts: { layer: label, code: e.code },
    cause: err,
  });
}

async function drain(body: AsyncIterable<unknown>): Promise<void> {
  for await (const _ of body) { /* discard */ }
}

export async function unpackLayers(dest: string, layers: LayerSource[], opts: UnpackOptions): Promise<UnpackSummary> {
  const started = process.hrtime.bigint();
  mkdirSync(dest, { recursive: true });
  const target: LayerTarget = opts.target ?? opts.targetAt?.(dest) ?? new DirectTarget(dest, { allowDevices: opts.allowDevices, isRoot: process.getuid?.() === 0 });
  const s: UnpackSummary = {
    layers: layers.length, entries: 0, files: 0, dirs: 0, symlinks: 0, hardlinks: 0, whiteouts: 0,
    devicesSkipped: 0, filtered: {}, xattrLinks: 0, runtimeInjectedRemoved: [], factoryVarEntries: 0, expandedBytes: 0, compressedBytes: 0, seconds: 0,
  };
  const { bootc } = opts;
  const links = new XattrLinks();
  const { limits } = opts;

  const bytesTotal = layers.reduce((n, l) => n + l.size, 0);
  for (const [i, layer] of layers.entries()) {
    failpoint('unpack.layer');
    const label = `${i + 1}/${layers.length} ${layer.digest}`;
    target.beginLayer(i);
    let layerIn = 0;
    let layerOut = 0;
    let skippedHere = 0;
    const filteredHere: Record<string, number> = {};
    const derived = bootc !== undefined && i >= bootc.firstDerivedLayer;
    const progress = (): void => opts.onProgress?.({ layer: i + 1, layers: layers.length, bytesIn: s.compressedBytes, bytesTotal, digest: layer.digest, size: layer.size, layerBytesIn: layerIn, entries: s.entries });
    const source = await layer.open();
    const extract = createTarExtract(label);
    const countIn = counter((n) => { layerIn += n; s.compressedBytes += n; });
    const countOut = counter((n) => {
      layerOut += n;
      bytesMoved(n);
      if (layerOut > RATIO_GRACE_BYTES && layerOut > limits.maxExpansionRatio * Math.max(layerIn, 1)) {
        throw limitError(`layer ${label} expands more than ${limits.maxExpansionRatio}x (${layerOut} bytes from ${layerIn}): decompression bomb?`, 'maxExpansionRatio', { layer: label, layerIn, layerOut });
      }
    });

    const one = async (entry: TarEntry, body: AsyncIterable<Buffer>): Promise<void> => {
      if (++s.entries > limits.maxEntries) {
        throw limitError(`image has more than ${limits.maxEntries} entries`, 'maxEntries', { layer: label });
      }
      for (const p of [entry.name, entry.linkname]) {
        if (Buffer.byteLength(p) > limits.maxPathLength) {
          throw limitError(`layer ${label} has a ${Buffer.byteLength(p)}-byte path, over ${limits.maxPathLength}`, 'maxPathLength', { layer: label, path: p.slice(0, 200) });
        }
      }
      let comps = cleanComponents(entry.name);
      if (bootc) {
        const where = bootcPath(comps, derived);
        if ('drop' in where) {
          filteredHere[where.drop] = (filteredHere[where.drop] ?? 0) + 1;
          await drain(body);
          return;
        }
        comps = where.keep;
      }
      const base = comps.at(-1) ?? '';
      if (base.startsWith(WHITEOUT)) {
        links.expectNone();
        s.whiteouts++;
        if (base === OPAQUE) target.opaque(comps.slice(0, -1), entry.name);
        // Other .wh..wh.* names are aufs bookkeeping (hardlink dirs); OCI reserves them.
        else if (!base.startsWith(`${WHITEOUT}${WHITEOUT}`)) target.whiteout(comps.slice(0, -1), base.slice(WHITEOUT.length), entry.name);
        await drain(body);
        return;
      }
      if (entry.type === 'file' && s.expandedBytes + entry.size > limits.maxExpandedBytes) {
        throw limitError(`image expands beyond ${limits.maxExpandedBytes} bytes at ${JSON.stringify(entry.name)}`, 'maxExpandedBytes', { layer: label });
      }
      let written = entry;
      let content: AsyncIterable<Buffer> = body;
      if (bootc) {
        const obj = derived ? undefined : repoObjectOf(comps);
        // First settle a pending link (this entry must be its .file), then register a new one.
        written = { ...entry, xattrs: links.forEntry(obj, entry.xattrs) };
        if (obj && obj.ext !== 'file') content = await xattrObject(obj, entry, comps, body);
        if (entry.type === 'hardlink' && entry.linkname) written.linkname = joinRel(bootcLinkTarget(cleanComponents(entry.linkname, 'hardlink target')));
      }
      const outcome = await target.writeEntry(written, comps, content);
      await drain(body);
      if (outcome === 'file') {
        s.files++;
        s.expandedBytes += entry.size;
      } else if (outcome === 'dir') s.dirs++;
      else if (outcome === 'symlink') s.symlinks++;
      else if (outcome === 'hardlink') s.hardlinks++;
      else if (outcome === 'device-skipped') {
        s.devicesSkipped++;
        skippedHere++;
      }
    };

    const entries = async (): Promise<void> => {
      for await (const body of extract) {
        failpoint('unpack.entry');
        const entry = toTarEntry(body.header, label);
        try {
          await one(entry, body as AsyncIterable<Buffer>);
        } catch (err) {
          throw entryError(err, entry.name, label);
        }
        if (s.entries % PROGRESS_EVERY === 0) progress();
      }
      links.expectNone();
    };

    /** Reads a small xattr object whole (it is parsed and written), registering it. */
    const xattrObject = async (obj: RepoObject, entry: TarEntry, comps: string[], body: AsyncIterable<Buffer>): Promise<AsyncIterable<Buffer>> => {
      const rel = joinRel(comps);
      if (entry.type === 'hardlink') {
        if (obj.ext === 'file-xattrs-link') links.link(obj, entry.name, { target: joinRel(cleanComponents(entry.linkname, 'hardlink target')) });
        return body;
      }
      if (entry.type !== 'file') return body;
      checkXattrsSize(entry.size, entry.name);
      const chunks: Buffer[] = [];
      for await (const c of body) chunks.push(c);
      const variant = Buffer.concat(chunks);
      if (obj.ext === 'file-xattrs') links.sharedObject(rel, variant);
      else links.link(obj, entry.name, { variant });
      return (async function* () { if (variant.length) yield variant; })();
    };
    const piped = pipeline(source, countIn, ...decompressionStages(layer.mediaType, label), countOut, extract);
    const looped = entries().catch((err: unknown) => {
      // The parser waits for this loop; without destroying it the pipeline would never settle.
      extract.destroy(err as Error);
      source.destroy();
      throw err;
    });
    const [p, l] = await Promise.allSettled([piped, looped]);
    if (p.status === 'rejected' || l.status === 'rejected') {
      const loopErr = l.status === 'rejected' ? l.reason : undefined;
      const pipeErr = p.status === 'rejected' ? tarError(p.reason, label) : undefined;
      const loopMapped = loopErr === undefined ? undefined : tarError(loopErr, label);
      throw [loopMapped, pipeErr].find((e) => e instanceof PivotError) ?? loopMapped ?? pipeErr;
    }
    if (Object.keys(filteredHere).length > 0) {
      for (const [top, n] of Object.entries(filteredHere)) s.filtered[top] = (s.filtered[top] ?? 0) + n;
      log().info({ layer: label, filtered: filteredHere }, 'derived layer: dropped entries outside /usr, /etc and /var, as bootc does');
    }
    if (skippedHere > 0) {
      log().warn({ layer: label, devicesSkipped: skippedHere }, 'skipped device nodes (allowDevices is off or not running as root)');
    }
    progress();
  }

  // The repo goes before the directory mtimes are set: removing it touches sysroot/, which must
  // still show the image's mtime afterwards.
  if (!opts.keepSysroot) dropOstreeRepo(dest);
  target.finish();
  s.xattrLinks = links.objects;
  if (bootc && bootc.firstDerivedLayer < layers.length) {
    s.runtimeInjectedRemoved = removeRuntimeInjected(dest, target);
    const declared = declareFactoryVar(dest, target.finishedReader?.());
    if (declared === undefined) log().warn({ tmpfiles: FACTORY_VAR_TMPFILES }, "a symlink in the image's usr/ stands where a directory must be: derived /var content is not declared for systemd-tmpfiles");
    else if (declared > 0) log().info({ entries: declared, tmpfiles: FACTORY_VAR_TMPFILES }, 'derived /var content declared for systemd-tmpfiles (created where the live /var lacks it)');
    s.factoryVarEntries = declared ?? 0;
  }
  failpoint('unpack.finish');
  s.seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return s;
}

/** bootc's cleanup after derived layers: container builds leave these empty files behind. */
function removeRuntimeInjected(dest: string, target: LayerTarget): string[] {
  const removed: string[] = [];
  for (const rel of RUNTIME_INJECTED) {
    if (target.removeEmptyFile) {
      if (target.removeEmptyFile(rel)) removed.push(rel);
      continue;
    }
    const path = hostPath(dest, rel);
    const st = lstatSync(path, { throwIfNoEntry: false });
    if (st?.isFile() && st.size === 0) {
      unlinkSync(path);
      removed.push(rel);
    }
  }
  if (removed.length) log().info({ removed }, 'removed empty files a container build left in /etc (not taken as new defaults)');
  return removed;
}

/**
 * An ostree-native image stores each file once under sysroot/ostree/repo/objects and hardlinks
 * it at its real path, so removing the repo frees nothing but names: the data stays reachable.
 * The empty sysroot/ directory stays, since it is a mount point in the booted layout.
 */
export function dropOstreeRepo(dest: string): boolean {
  const repo = `${dest}/sysroot/ostree/repo`;
  const st = lstatSync(repo, { throwIfNoEntry: false });
  if (!st?.isDirectory()) return false;
  const sysrootOstree = `${dest}/sysroot/ostree`;
  if (!lstatSync(sysrootOstree).isDirectory() || !lstatSync(`${dest}/sysroot`).isDirectory()) return false;
  rmSync(sysrootOstree, { recursive: true, force: true });
  return true;
}
