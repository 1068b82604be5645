import { describe, expect, it } from 'vitest';
import { PivotError } from '../../src/errors.ts';
import { cleanComponents, resolveDirInRoot, type NodeKind, type PathProbe } from '../../src/unpack/safepath.ts';

/** An in-memory tree: rel -> 'dir' | 'file' | '->target'. */
function memProbe(tree: Record<string, string>): PathProbe & { made: string[] } {
  const made: string[] = [];
  return {
    made,
    kind(rel): NodeKind {
      const v = tree[rel];
      if (v === undefined) return 'missing';
      if (v === 'dir') return 'dir';
      if (v.startsWith('->')) return 'symlink';
      return 'other';
    },
    readlink: (rel) => (tree[rel] as string).slice(2),
    mkdir(rel) { tree[rel] = 'dir'; made.push(rel); },
  };
}

describe('cleanComponents', () => {
  it.each([
    ['a/b/c', ['a', 'b', 'c']],
    ['/etc/passwd', ['etc', 'passwd']],
    ['../../x', ['x']],
    ['a/../../b', ['b']],
    ['./a//b/./', ['a', 'b']],
    ['..', []],
    ['', []],
  ])('%j -> %j', (name, want) => {
    expect(cleanComponents(name)).toEqual(want);
  });
  it('refuses NUL', () => {
    expect(() => cleanComponents('a\0b')).toThrow(PivotError);
  });
});

describe('resolveDirInRoot', () => {
  const opts = { create: false, entry: 'e' };
  it('follows symlinks inside the root, restarting absolute targets at the root', () => {
    const p = memProbe({ a: '->/', usr: 'dir', 'usr/lib': 'dir', lib: '->usr/lib', up: '->../../../usr' });
    expect(resolveDirInRoot(['a', 'usr', 'lib'], p, opts)).toEqual(['usr', 'lib']);
    expect(resolveDirInRoot(['lib'], p, opts)).toEqual(['usr', 'lib']);
    expect(resolveDirInRoot(['up', 'lib'], p, opts)).toEqual(['usr', 'lib']);
  });
  it('resolves relative targets from the link directory, with .. clamped at the root', () => {
    const p = memProbe({ usr: 'dir', 'usr/bin': 'dir', 'usr/sbin': '->bin', 'usr/x': '->../../../../usr/bin' });
    expect(resolveDirInRoot(['usr', 'sbin'], p, opts)).toEqual(['usr', 'bin']);
    expect(resolveDirInRoot(['usr', 'x'], p, opts)).toEqual(['usr', 'bin']);
  });
  it('returns undefined for missing components, or creates them', () => {
    const p = memProbe({ a: '->b' });
    expect(resolveDirInRoot(['a', 'c'], p, opts)).toBeUndefined();
    expect(resolveDirInRoot(['a', 'c'], p, { ...opts, create: true })).toEqual(['b', 'c']);
    expect(p.made).toEqual(['b', 'b/c']);
  });
  it('refuses loops and non-directories', () => {
    expect(() => resolveDirInRoot(['x'], memProbe({ x: '->y', y: '->x' }), opts)).toThrow(/too many levels/);
    expect(() => resolveDirInRoot(['f', 'g'], memProbe({ f: 'file' }), opts)).toThrow(/"f" to be a directory/);
    expect(() => resolveDirInRoot(['l', 'g'], memProbe({ l: '->f', f: 'file' }), opts)).toThrow(/"f" to be a directory/);
  });
});
