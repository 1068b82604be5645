import { describe, expect, it } from 'vitest';
import { compareToBooted, labelOf, objectVerdict, type BootedFacts, type NodeFacts } from '../../../src/unpack/delta/identity.ts';

const file = (over: Partial<NodeFacts> = {}): NodeFacts => ({ type: 'file', mode: 0o644, uid: 0, gid: 0, size: 5, xattrs: new Map(), ...over });
const booted = (over: Partial<BootedFacts> = {}): BootedFacts => ({ ...file(), dev: 1n, ino: 10n, ...over });
const label = (s: string, nul = true): Map<string, Buffer> => new Map([['security.selinux', Buffer.from(nul ? `${s}\0` : s)]]);

describe('compareToBooted', () => {
  it('asks for the content only when every other fact agrees, and never for an empty file', () => {
    expect(compareToBooted(file(), booted(), '/usr/x')).toEqual({ kind: 'compare-content' });
    expect(compareToBooted(file({ size: 0 }), booted({ size: 0 }), '/usr/x')).toEqual({ kind: 'same' });
  });

  it.each([
    ['type', file({ type: 'symlink', linkTarget: 'a' }), booted(), /type file -> symlink/],
    ['mode', file({ mode: 0o4755 }), booted(), /mode 644 -> 4755/],
    ['uid', file({ uid: 1000 }), booted(), /owner 0:0 -> 1000:0/],
    ['gid', file({ gid: 5 }), booted(), /owner 0:0 -> 0:5/],
    ['size', file({ size: 6 }), booted(), /size 5 -> 6/],
    ['xattr only in the image', file({ xattrs: new Map([['security.capability', Buffer.from([1])]]) }), booted(), /xattr security.capability only in the image/],
    ['xattr only booted', file(), booted({ xattrs: new Map([['user.a', Buffer.from('1')]]) }), /xattr user.a only booted/],
    ['xattr value', file({ xattrs: new Map([['user.a', Buffer.from('2')]]) }), booted({ xattrs: new Map([['user.a', Buffer.from('1')]]) }), /xattr user.a value/],
    ['symlink target', file({ type: 'symlink', linkTarget: 'b' }), booted({ type: 'symlink', linkTarget: 'a' }), /symlink target/],
    ['device', file({ type: 'char', rdev: { major: 1, minor: 3 } }), booted({ type: 'char', rdev: { major: 1, minor: 5 } }), /device number/],
    ['nothing booted', file(), undefined, /not in the booted/],
    ['directory', file({ type: 'dir' }), booted({ type: 'dir' }), /always staged/],
  ])('differs on %s', (_what, image, b, why) => {
    const v = compareToBooted(image, b, '/usr/x');
    expect(v.kind).toBe('differs');
    expect(v.kind === 'differs' && v.why).toMatch(why);
  });

  it('ignores a symlink\'s own mode and the security.selinux xattr itself', () => {
    expect(compareToBooted(file({ type: 'symlink', mode: 0o777, linkTarget: 'a' }), booted({ type: 'symlink', mode: 0o755, linkTarget: 'a' }), '/usr/l')).toEqual({ kind: 'same' });
    expect(compareToBooted(file(), booted({ xattrs: label('system_u:object_r:bin_t:s0') }), '/usr/x')).toEqual({ kind: 'compare-content' });
  });

  it('compares the label the new policy gives the path with the booted label, when a lookup is given', () => {
    const seen: string[] = [];
    const policy = (path: string): string | undefined => {
      seen.push(path);
      return path === '/usr/bin/ls' ? 'system_u:object_r:bin_t:s0' : undefined;
    };
    expect(compareToBooted(file(), booted({ xattrs: label('system_u:object_r:bin_t:s0') }), '/usr/bin/ls', policy)).toEqual({ kind: 'compare-content' });
    expect(compareToBooted(file(), booted({ xattrs: label('system_u:object_r:bin_t:s0', false) }), '/usr/bin/ls', policy)).toEqual({ kind: 'compare-content' });
    const v = compareToBooted(file(), booted({ xattrs: label('system_u:object_r:usr_t:s0') }), '/usr/bin/ls', policy);
    expect(v).toEqual({ kind: 'differs', why: 'label system_u:object_r:usr_t:s0 -> system_u:object_r:bin_t:s0' });
    expect(compareToBooted(file(), booted({ xattrs: label('system_u:object_r:usr_t:s0') }), '/usr/other', policy).kind).toBe('differs');
    expect(compareToBooted(file(), booted(), '/usr/other', policy)).toEqual({ kind: 'compare-content' });
    expect(seen).toEqual(['/usr/bin/ls', '/usr/bin/ls', '/usr/bin/ls', '/usr/other', '/usr/other']);
  });

  it('labelOf strips the kernel\'s trailing NUL', () => {
    expect(labelOf(label('a_t'))).toBe('a_t');
    expect(labelOf(new Map())).toBeUndefined();
  });
});

describe('objectVerdict (ostree-object shortcut)', () => {
  const object = booted({ ino: 10n });
  it('the same inode as the booted repo object decides without reading', () => {
    expect(objectVerdict(file(), object, booted({ ino: 10n }), '/usr/x')).toEqual({ kind: 'same' });
  });
  it('another inode, or no booted object, falls back to comparing content', () => {
    expect(objectVerdict(file(), object, booted({ ino: 11n }), '/usr/x')).toEqual({ kind: 'compare-content' });
    expect(objectVerdict(file(), object, booted({ dev: 2n, ino: 10n }), '/usr/x')).toEqual({ kind: 'compare-content' });
    expect(objectVerdict(file(), undefined, booted(), '/usr/x')).toEqual({ kind: 'compare-content' });
  });
  it('metadata still decides first: a bare-user repo keeps the real mode elsewhere', () => {
    expect(objectVerdict(file({ mode: 0o755 }), object, booted({ ino: 10n }), '/usr/x').kind).toBe('differs');
    expect(objectVerdict(file(), object, booted({ ino: 10n, xattrs: label('x_t') }), '/usr/x', () => 'y_t').kind).toBe('differs');
  });
});
