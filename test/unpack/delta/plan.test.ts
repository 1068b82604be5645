import { describe, expect, it } from 'vitest';
import { ancestorsOf, planDeltaDir, type ChildView } from '../../../src/unpack/delta/plan.ts';

const c = (name: string, delta: ChildView['delta'], bootedDir = false, skipped = false): ChildView => ({ name, delta, bootedDir, skipped });

describe('planDeltaDir', () => {
  it('whites out booted children the image lacks when something below is still shown from the booted side', () => {
    expect(planDeltaDir([c('gone', 'missing'), c('same', 'missing', false, true), c('new', 'other'), c('sub', 'dir', true), c('was-file', 'dir', false)], true))
      .toEqual({ opaque: false, whiteouts: ['gone'], descend: ['sub'] });
  });

  it('marks the directory opaque instead when nothing below relies on the booted side', () => {
    expect(planDeltaDir([c('gone', 'missing'), c('gone2', 'missing', true), c('sub', 'dir', true)], false)).toEqual({ opaque: true, whiteouts: [], descend: [] });
  });

  it('needs no mark when every booted child is shadowed or shown', () => {
    expect(planDeltaDir([c('a', 'other'), c('b', 'missing', false, true), c('d', 'dir', true)], false)).toEqual({ opaque: false, whiteouts: [], descend: ['d'] });
    expect(planDeltaDir([], false)).toEqual({ opaque: false, whiteouts: [], descend: [] });
  });

  it('ancestorsOf lists every proper ancestor', () => {
    expect([...ancestorsOf(['usr/a/b/c', 'usr/x'])].sort()).toEqual(['usr', 'usr/a', 'usr/a/b']);
  });
});
