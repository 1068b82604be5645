// The plan, exhaustively and without a disk: every combination of states for one path, nested
// combinations for a directory and a child, and thousands of random trees, all checked against an
// independent model of ostree's merge by simulating the actions in memory.
import { describe, expect, it } from 'vitest';
import { planMerge } from '../../src/etc/plan.ts';
import { planFromTrees } from '../../src/etc/index.ts';
import type { EtcPlan } from '../../src/etc/types.ts';
import { d, f, fifo, l, memTree, modelMerge, normalize, randomTrees, type Node, type Spec } from './helpers.ts';

function plan(base: Spec, current: Spec, next: Spec): EtcPlan {
  return planFromTrees({ base: memTree(base, '/b'), current: memTree(current, '/c'), new: memTree(next, '/n') });
}

/** Applies the actions to a copy of current, in memory. */
function simulate(p: EtcPlan, current: Spec, next: Spec): Spec {
  const out: Spec = { ...normalize(current) };
  const nextAll = normalize(next);
  const drop = (rel: string): void => {
    for (const q of Object.keys(out)) if (q === rel || q.startsWith(`${rel}/`)) delete out[q];
  };
  for (const a of p.actions) {
    const parent = a.path.includes('/') ? a.path.slice(0, a.path.lastIndexOf('/')) : '';
    if (parent !== '') expect(out[parent]?.t, `parent of ${a.path} must be a directory when ${a.action} runs`).toBe('d');
    switch (a.action) {
      case 'add':
      case 'replace':
      case 'symlink':
      case 'mkdir':
        if (a.action === 'add') expect(out[a.path]).toBeUndefined();
        drop(a.path);
        out[a.path] = a.entry.type === 'dir' ? d(a.entry.mode, a.entry.uid, a.entry.gid) : (nextAll[a.path] as Node);
        break;
      case 'remove':
        expect(out[a.path]).toBeDefined();
        drop(a.path);
        break;
      case 'chmod': {
        const n = out[a.path];
        if (n?.t !== 'f' && n?.t !== 'd') throw new Error(`chmod on ${n?.t ?? 'nothing'}`);
        out[a.path] = { ...n, m: a.mode };
        break;
      }
      case 'chown': {
        const n = out[a.path];
        if (!n || n.t === 'p') throw new Error('chown on nothing or a FIFO');
        out[a.path] = { ...n, u: a.uid, g: a.gid };
      }
    }
  }
  return out;
}

const canon = (s: Spec): string => JSON.stringify(Object.entries(s).sort(([a], [b]) => (a < b ? -1 : 1)));

function check(base: Spec, current: Spec, next: Spec): void {
  const model = modelMerge(base, current, next);
  const p = plan(base, current, next);
  const label = JSON.stringify({ base, current, next });
  if ('conflict' in model) {
    expect(p.conflicts.map((c) => c.path).sort(), label).toEqual(model.conflict.sort());
    return;
  }
  expect(p.conflicts, label).toEqual([]);
  expect(canon(simulate(p, current, next)), label).toBe(canon(normalize(model.result)));
  // Applying the plan's result again must be a no-op: the merge converges.
  const again = plan(base, simulate(p, current, next), next);
  const local = plan(base, current, current);
  expect(local.actions, `${label}: new == current changes nothing`).toEqual([]);
  expect(again.conflicts).toEqual([]);
}

const STATES: Array<[string, Node | undefined]> = [
  ['absent', undefined],
  ['fileA', f('A')],
  ['fileB', f('B')],
  ['fileA-600', f('A', 0o600)],
  ['fileA-uid1000', f('A', 0o644, 1000)],
  ['fileA-gid5', f('A', 0o644, 0, 5)],
  ['dir', d()],
  ['dir-700', d(0o700)],
  ['link-x', l('x')],
  ['link-y', l('y')],
  ['link-x-uid1000', l('x', 1000)],
  ['fifo', fifo()],
];

const one = (n: Node | undefined): Spec => (n ? { p: n } : {});

describe('planMerge: one path, every combination of base/current/new', () => {
  for (const [bn, b] of STATES) {
    it(`base ${bn}`, () => {
      for (const [, c] of STATES) for (const [, n] of STATES) check(one(b), one(c), one(n));
    });
  }
});

describe('planMerge: a directory and a child, every combination', () => {
  const dirStates: Array<Node | undefined> = [undefined, d(), d(0o700), f('A'), l('x')];
  const childStates: Array<Node | undefined> = [undefined, f('A'), f('B'), f('A', 0o600), l('x'), d()];
  const tree = (dn: Node | undefined, cn: Node | undefined): Spec => {
    if (!dn) return {};
    if (dn.t !== 'd' || !cn) return { p: dn };
    return { p: dn, 'p/c': cn };
  };
  it('all 30^3 pairs match the ostree model', () => {
    let n = 0;
    for (const bd of dirStates) for (const bc of childStates)
      for (const cd of dirStates) for (const cc of childStates)
        for (const nd of dirStates) for (const nc of childStates) {
          check(tree(bd, bc), tree(cd, cc), tree(nd, nc));
          n++;
        }
    expect(n).toBe(30 ** 3);
  });
});

describe('planMerge: random trees against the model', () => {
  it('3000 seeded cases', () => {
    let conflicts = 0;
    for (let seed = 1; seed <= 3000; seed++) {
      const { base, current, next } = randomTrees(seed);
      const model = modelMerge(base, current, next);
      if ('conflict' in model) conflicts++;
      check(base, current, next);
    }
    // The generator must exercise conflicts too, not only clean merges.
    expect(conflicts).toBeGreaterThan(10);
  });
});

describe('planMerge: details', () => {
  it('asks for hashes only where sizes are equal, and plans once they are there', () => {
    const base = memTree({ same: f('aaa'), diff: f('aaa') });
    const current = memTree({ same: f('bbb'), diff: f('aaaa') });
    const next = memTree({ same: f('aaa'), diff: f('aaa') });
    for (const t of [base, current, next]) for (const e of t.entries.values()) delete e.sha256;
    const first = planMerge({ base, current, new: next });
    expect(first.complete).toBe(false);
    const missing = first.complete ? [] : first.missing;
    // current's 'diff' differs in size from base and new: its content is never read. (base and
    // new still are, to tell whether upstream changed it too, for the both-changed warning.)
    expect(missing).not.toContainEqual({ tree: 'current', path: 'diff' });
    expect(missing).toEqual(expect.arrayContaining([{ tree: 'base', path: 'same' }, { tree: 'current', path: 'same' }]));
  });

  it('orders chown before chmod so setuid bits survive', () => {
    const p = plan({ s: f('x', 0o755) }, { s: f('x', 0o755) }, { s: f('x', 0o4755, 1000) });
    expect(p.actions.map((a) => a.action)).toEqual(['chown', 'chmod']);
  });

  it('warns on both-sides changes and keeps local', () => {
    const p = plan({ k: f('base') }, { k: f('local') }, { k: f('upstream') });
    expect(p.actions).toEqual([]);
    expect(p.warnings).toEqual([expect.objectContaining({ code: 'both-changed', path: 'k' })]);
  });

  it('does not warn when both sides made the same change', () => {
    const p = plan({ k: f('base') }, { k: f('same') }, { k: f('same') });
    expect(p.warnings).toEqual([]);
  });

  it('reports every ignored special file, in each tree', () => {
    const p = plan({ q: fifo() }, { q: fifo(), r: fifo() }, { s: fifo() });
    expect(p.ignored.map((g) => `${g.tree}:${g.path}`).sort()).toEqual(['base:q', 'current:q', 'current:r', 'new:s']);
    expect(p.actions).toEqual([]);
  });

  it('a conflict names every path', () => {
    const p = plan({ a: f('1'), b: f('1') }, { a: f('2'), b: f('2'), c: f('local') }, { a: d(), 'a/x': f('x'), b: d(), c: d() });
    expect(p.conflicts.map((c) => c.path)).toEqual(['a', 'b', 'c']);
  });

  it('never touches the root directory itself', () => {
    const base = memTree({});
    const next = memTree({});
    (next.entries.get('') as { mode: number }).mode = 0o700;
    const p = planFromTrees({ base, current: memTree({}), new: next });
    expect(p.actions).toEqual([]);
  });
});

describe('formatPlan', () => {
  it('keeps one path per line: odd names are JSON-quoted, plain ones are not', async () => {
    const { formatPlan, summarizePlan } = await import('../../src/etc/index.ts');
    const p = plan({}, {}, { 'a\nb': f('x'), 'plain name': f('y'), ' lead': f('z'), 'ünï': f('u') });
    const text = formatPlan(p);
    expect(text).toContain('  "a\\nb"  [file 0644 0:0, 1 bytes]');
    expect(text).toContain('  plain name  [file');
    expect(text).toContain('  " lead"  [file');
    expect(text).toContain('  ünï  [file');
    expect(text.split('\n').filter((line) => line.startsWith('  ') && line.includes('[file'))).toHaveLength(4);
    expect(summarizePlan(p).counts.add).toBe(4);
  });
});
