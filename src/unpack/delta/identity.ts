// PURE: is the node image's entry at a path identical to what the booted /usr has there, so that
// delta staging may leave it out and let the overlay show the booted file? Identical means what a
// full staging would leave at that path and what the booted path shows agree on everything the
// tree digest covers (digest.ts): type, permission bits, owner, size and content, symlink target,
// xattrs other than security.selinux, and the label the *new* policy gives the path compared with
// the booted file's label. Content is the one fact that costs I/O, so it is asked for last and
// only when everything else, size included, already agrees.
export type NodeType = 'file' | 'dir' | 'symlink' | 'fifo' | 'char' | 'block' | 'socket';

export interface NodeFacts {
  type: NodeType;
  /** Permission bits with setuid/setgid/sticky (mode & 0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Regular files: bytes of content. */
  size: number;
  /** Symlinks: the target, byte for byte. */
  linkTarget?: string;
  /** Devices: major and minor. */
  rdev?: { major: number; minor: number };
  xattrs: ReadonlyMap<string, Buffer>;
}

export interface BootedFacts extends NodeFacts {
  /** Identity of the inode, for the ostree-object shortcut. */
  dev: bigint;
  ino: bigint;
}

/**
 * The label the new policy gives a path (what `setfiles -r` would write in a full staging), or
 * undefined when it gives none. Absent when SELinux is off: labels are then not compared.
 */
export type LabelLookup = (usrPath: string, type: NodeType, mode: number) => string | undefined;

export type Verdict =
  | { kind: 'same' }
  | { kind: 'compare-content' }
  | { kind: 'differs'; why: string };

export const SELINUX_XATTR = 'security.selinux';

/** security.selinux as written by the kernel may end in a NUL; the policy's label does not. */
export function labelOf(xattrs: ReadonlyMap<string, Buffer>): string | undefined {
  const v = xattrs.get(SELINUX_XATTR);
  if (v === undefined) return undefined;
  const end = v.length > 0 && v[v.length - 1] === 0 ? v.length - 1 : v.length;
  return v.subarray(0, end).toString('utf8');
}

function xattrsDiffer(a: ReadonlyMap<string, Buffer>, b: ReadonlyMap<string, Buffer>): string | undefined {
  const names = new Set([...a.keys(), ...b.keys()]);
  for (const name of names) {
    if (name === SELINUX_XATTR) continue;
    const x = a.get(name);
    const y = b.get(name);
    if (x === undefined || y === undefined) return `xattr ${name} ${x === undefined ? 'only booted' : 'only in the image'}`;
    if (!x.equals(y)) return `xattr ${name} value`;
  }
  return undefined;
}

/**
 * Decides from metadata alone. `usrPath` is the path under /usr (e.g. /usr/bin/ls), for the
 * label lookup. A 'compare-content' verdict means: regular files of equal size whose every
 * other fact agrees; the caller compares the bytes.
 */
export function compareToBooted(image: NodeFacts, booted: NodeFacts | undefined, usrPath: string, labelFor?: LabelLookup): Verdict {
  if (!booted) return { kind: 'differs', why: 'not in the booted /usr' };
  if (image.type !== booted.type) return { kind: 'differs', why: `type ${booted.type} -> ${image.type}` };
  // Directories are always staged (their metadata is the top layer's in an overlay): callers
  // never ask, and a directory is never "the same" here.
  if (image.type === 'dir') return { kind: 'differs', why: 'directories are always staged' };
  // Linux ignores a symlink's own mode bits, and tar and the booted tree disagree on them.
  if (image.type !== 'symlink' && image.mode !== booted.mode) {
    return { kind: 'differs', why: `mode ${booted.mode.toString(8)} -> ${image.mode.toString(8)}` };
  }
  if (image.uid !== booted.uid || image.gid !== booted.gid) {
    return { kind: 'differs', why: `owner ${booted.uid}:${booted.gid} -> ${image.uid}:${image.gid}` };
  }
  if (image.type === 'symlink' && image.linkTarget !== booted.linkTarget) return { kind: 'differs', why: 'symlink target' };
  if ((image.type === 'char' || image.type === 'block')
    && (image.rdev?.major !== booted.rdev?.major || image.rdev?.minor !== booted.rdev?.minor)) {
    return { kind: 'differs', why: 'device number' };
  }
  const x = xattrsDiffer(image.xattrs, booted.xattrs);
  if (x) return { kind: 'differs', why: x };
  if (labelFor) {
    const wanted = labelFor(usrPath, image.type, image.mode);
    const have = labelOf(booted.xattrs);
    if (wanted !== have) return { kind: 'differs', why: `label ${have ?? '(none)'} -> ${wanted ?? '(none)'}` };
  }
  if (image.type === 'file') {
    if (image.size !== booted.size) return { kind: 'differs', why: `size ${booted.size} -> ${image.size}` };
    // An empty file has no content to compare.
    return image.size === 0 ? { kind: 'same' } : { kind: 'compare-content' };
  }
  return { kind: 'same' };
}

/**
 * The ostree-object shortcut. On an ostree-booted host every file of the booted deployment is a
 * hardlink into /sysroot/ostree/repo/objects, and an object's name is the checksum of its
 * content, mode, owner and xattrs. So when the image's entry is a hardlink to the object with
 * that checksum, and the booted repo holds that object, the same inode at the booted path means
 * the same content: metadata is still compared (a bare-user repo keeps the real mode elsewhere)
 * but nothing is read. Any other inode falls back to comparing content.
 */
export function objectVerdict(image: NodeFacts, bootedObject: BootedFacts | undefined, booted: BootedFacts | undefined, usrPath: string, labelFor?: LabelLookup): Verdict {
  const meta = compareToBooted(image, booted, usrPath, labelFor);
  if (meta.kind !== 'compare-content') return meta;
  if (bootedObject && booted && bootedObject.type === 'file' && bootedObject.dev === booted.dev && bootedObject.ino === booted.ino) {
    return { kind: 'same' };
  }
  return meta;
}
