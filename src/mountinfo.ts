// /proc/self/mountinfo, as proc_pid_mountinfo(5) describes it: what is mounted where, from which
// filesystem root, with which per-mount options. The mount step reads it to verify its switch.
import { readFileSync } from 'node:fs';

export interface MountinfoEntry {
  id: number;
  parent: number;
  device: string;
  root: string;
  mountPoint: string;
  options: string;
  /** The optional fields: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`; none means private. */
  optional: string[];
  fsType: string;
  source: string;
  superOptions: string;
}

function unescapeMountinfo(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** PURE: proc_pid_mountinfo(5). */
export function parseMountinfo(text: string): MountinfoEntry[] {
  const out: MountinfoEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-', 6);
    if (dash < 0 || f.length < dash + 4) continue;
    out.push({
      id: Number(f[0]), parent: Number(f[1]), device: f[2]!, root: unescapeMountinfo(f[3]!),
      mountPoint: unescapeMountinfo(f[4]!), options: f[5]!, optional: f.slice(6, dash), fsType: f[dash + 1]!,
      source: unescapeMountinfo(f[dash + 2]!), superOptions: f[dash + 3]!,
    });
  }
  return out;
}

export function readMountinfo(): MountinfoEntry[] {
  return parseMountinfo(readFileSync('/proc/self/mountinfo', 'utf8'));
}

/** PURE: the mount a lookup of `path` lands on, i.e. the last one stacked there. */
export function topMountAt(entries: MountinfoEntry[], path: string): MountinfoEntry | undefined {
  const here = entries.filter((e) => e.mountPoint === path);
  return here.find((e) => !here.some((o) => o.parent === e.id)) ?? here.at(-1);
}

/**
 * PURE: what a lookup of `path` shows, as a filesystem (device) and the directory of it (root):
 * the top mount at `path`, or else the deepest mount above it with the rest of the path appended.
 * A bind of `path` shows exactly this.
 */
export function viewAt(entries: MountinfoEntry[], path: string): { device: string; root: string } | undefined {
  const holder = mountHolding(entries, path);
  if (!holder) return undefined;
  if (holder.mountPoint === path) return { device: holder.device, root: holder.root };
  const rest = holder.mountPoint === '/' ? path : path.slice(holder.mountPoint.length);
  return { device: holder.device, root: holder.root === '/' ? rest : `${holder.root}${rest}` };
}

/** The per-mount flags that decide what a tree may do: run programs, honour set-id bits, open devices. */
export interface MountAccessFlags {
  nosuid: boolean;
  nodev: boolean;
  noexec: boolean;
}

/** PURE: the access flags in a mountinfo per-mount options field. */
export function accessFlags(options: string): MountAccessFlags {
  const o = options.split(',');
  return { nosuid: o.includes('nosuid'), nodev: o.includes('nodev'), noexec: o.includes('noexec') };
}

/** PURE: the mount that holds `path`: the top one at it, or else the deepest one above it. */
export function mountHolding(entries: MountinfoEntry[], path: string): MountinfoEntry | undefined {
  const at = topMountAt(entries, path);
  if (at) return at;
  let best: string | undefined;
  for (const e of entries) {
    const covers = e.mountPoint === '/' || path.startsWith(`${e.mountPoint}/`);
    if (covers && (best === undefined || e.mountPoint.length > best.length)) best = e.mountPoint;
  }
  return best === undefined ? undefined : topMountAt(entries, best);
}
