// The 18 corner cases from the prior-art notes, each applied to real directories and checked on
// the resulting tree (content, type, mode, owner, symlink target, xattrs), plus odd path names.
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, lstatSync, readFileSync, readlinkSync, readdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { applyEtcMerge, planEtcMerge, recoverEtcJournal } from '../../src/etc/index.ts';
import { PivotError } from '../../src/errors.ts';
import { readXattrs } from '../../src/xattr.ts';
import { cleanup, d, f, l, materialize, snapshot, tempDir, type Spec } from './helpers.ts';

const dirs: string[] = [];
afterEach(() => cleanup(...dirs.splice(0)));

async function merge(base: Spec, current: Spec, next: Spec): Promise<{ root: string; etc: string }> {
  const root = tempDir();
  dirs.push(root);
  materialize(join(root, 'base'), base);
  materialize(join(root, 'etc'), current);
  materialize(join(root, 'new'), next);
  const etc = join(root, 'etc');
  expect(await recoverEtcJournal(etc)).toBe('none');
  const plan = await planEtcMerge({ base: join(root, 'base'), current: etc, new: join(root, 'new') });
  await applyEtcMerge(plan);
  // The journal is gone after a commit.
  expect(readdirSync(root).sort()).toEqual(['base', 'etc', 'new']);
  return { root, etc };
}

function stat(etc: string, rel: string): { type: string; mode: number; uid: number; gid: number } {
  const st = lstatSync(join(etc, rel));
  return {
    type: st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other',
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
  };
}
const read = (etc: string, rel: string): string => readFileSync(join(etc, rel), 'utf8');

describe('ostree corner cases on disk', () => {
  it('1. changed only upstream: new wins, with its mode, owner and xattrs', async () => {
    const { etc } = await merge({ a: f('old') }, { a: f('old') }, { a: f('new!', 0o640, 1000, 5, { 'user.origin': 'image' }) });
    expect(read(etc, 'a')).toBe('new!');
    expect(stat(etc, 'a')).toEqual({ type: 'file', mode: 0o640, uid: 1000, gid: 5 });
    expect(readXattrs(join(etc, 'a')).get('user.origin')?.toString()).toBe('image');
  });

  it('2. changed only locally: local kept', async () => {
    const { etc } = await merge({ a: f('old') }, { a: f('local', 0o600, 1000) }, { a: f('old') });
    expect(read(etc, 'a')).toBe('local');
    expect(stat(etc, 'a')).toMatchObject({ mode: 0o600, uid: 1000 });
  });

  it('3. changed on both sides: local wins', async () => {
    const { etc } = await merge({ a: f('old') }, { a: f('local') }, { a: f('upstream') });
    expect(read(etc, 'a')).toBe('local');
  });

  it('4. changed locally, removed upstream: kept', async () => {
    const { etc } = await merge({ a: f('old') }, { a: f('local') }, {});
    expect(read(etc, 'a')).toBe('local');
  });

  it('5. added locally: kept (the pull secret case)', async () => {
    const { etc } = await merge({}, { 'pull-secret.json': f('{"auths":{}}', 0o600) }, { other: f('x') });
    expect(read(etc, 'pull-secret.json')).toBe('{"auths":{}}');
    expect(stat(etc, 'pull-secret.json').mode).toBe(0o600);
    expect(read(etc, 'other')).toBe('x');
  });

  it('6. added on both sides: local wins', async () => {
    const { etc } = await merge({}, { k: f('local') }, { k: f('upstream', 0o755) });
    expect(read(etc, 'k')).toBe('local');
    expect(stat(etc, 'k').mode).toBe(0o644);
  });

  it('7. deleted locally: stays deleted even if upstream changed it', async () => {
    const { etc } = await merge({ a: f('old'), dd: d(), 'dd/x': f('x') }, {}, { a: f('changed'), dd: d(), 'dd/x': f('x2'), 'dd/y': f('y') });
    expect(existsSync(join(etc, 'a'))).toBe(false);
    expect(existsSync(join(etc, 'dd'))).toBe(false);
  });

  it('8. removed upstream, untouched locally: removed (files and whole directories)', async () => {
    const { etc } = await merge({ a: f('old'), dd: d(), 'dd/x': f('x') }, { a: f('old'), dd: d(), 'dd/x': f('x') }, {});
    expect(readdirSync(etc)).toEqual([]);
  });

  it('9. mode-only and owner-only local changes are local changes', async () => {
    const { etc } = await merge(
      { m: f('same'), o: f('same') },
      { m: f('same', 0o600), o: f('same', 0o644, 1000, 1000) },
      { m: f('upstream'), o: f('upstream') },
    );
    expect(read(etc, 'm')).toBe('same');
    expect(stat(etc, 'm').mode).toBe(0o600);
    expect(read(etc, 'o')).toBe('same');
    expect(stat(etc, 'o')).toMatchObject({ uid: 1000, gid: 1000 });
  });

  it('10. a deep new local directory chain with odd modes', async () => {
    const modes = [0o700, 0o770, 0o777, 0o707];
    const chain: Spec = { 'x': d(modes[0]), 'x/y': d(modes[1], 1000), 'x/y/z': d(modes[2]), 'x/y/z/w': d(modes[3], 0, 1000), 'x/y/z/w/file': f('deep', 0o400) };
    const { etc } = await merge({}, chain, { x: d(), 'x/up': f('up') });
    expect(stat(etc, 'x').mode).toBe(0o700);
    expect(stat(etc, 'x/y')).toMatchObject({ mode: 0o770, uid: 1000 });
    expect(stat(etc, 'x/y/z').mode).toBe(0o777);
    expect(stat(etc, 'x/y/z/w')).toMatchObject({ mode: 0o707, gid: 1000 });
    expect(read(etc, 'x/y/z/w/file')).toBe('deep');
    expect(read(etc, 'x/up')).toBe('up');
  });

  it('11. a locally re-moded directory keeps its mode and receives new upstream files', async () => {
    const { etc } = await merge(
      { 'kubernetes': d(), 'kubernetes/old.conf': f('o') },
      { 'kubernetes': d(0o700), 'kubernetes/old.conf': f('o') },
      { 'kubernetes': d(0o755), 'kubernetes/old.conf': f('o2'), 'kubernetes/new.conf': f('n'), 'kubernetes/sub/deep': f('s') },
    );
    expect(stat(etc, 'kubernetes').mode).toBe(0o700);
    expect(read(etc, 'kubernetes/new.conf')).toBe('n');
    expect(read(etc, 'kubernetes/old.conf')).toBe('o2');
    expect(read(etc, 'kubernetes/sub/deep')).toBe('s');
  });

  it('12. dangling symlinks are kept and installed as links, never followed', async () => {
    const { etc } = await merge({}, { mine: l('/does/not/exist') }, { theirs: l('../nowhere') });
    expect(readlinkSync(join(etc, 'mine'))).toBe('/does/not/exist');
    expect(readlinkSync(join(etc, 'theirs'))).toBe('../nowhere');
  });

  it('13. a symlink pointing outside /etc is removed without being followed', async () => {
    const root = tempDir();
    dirs.push(root);
    materialize(join(root, 'outside'), { 'victim/keep': f('precious') });
    const { etc } = await merge({ out: l(join(root, 'outside/victim')) }, { out: l(join(root, 'outside/victim')) }, {});
    expect(existsSync(join(etc, 'out'))).toBe(false);
    expect(readFileSync(join(root, 'outside/victim/keep'), 'utf8')).toBe('precious');
  });

  it('14. file <-> symlink type changes, upstream and local', async () => {
    const { etc } = await merge(
      { up1: f('file'), up2: l('t'), lo1: f('file'), lo2: l('t') },
      { up1: f('file'), up2: l('t'), lo1: l('mine'), lo2: f('mine') },
      { up1: l('theirs'), up2: f('theirs'), lo1: f('file2'), lo2: l('t2') },
    );
    expect(readlinkSync(join(etc, 'up1'))).toBe('theirs');
    expect(stat(etc, 'up2').type).toBe('file');
    expect(read(etc, 'up2')).toBe('theirs');
    expect(readlinkSync(join(etc, 'lo1'))).toBe('mine');
    expect(read(etc, 'lo2')).toBe('mine');
  });

  it('15. file -> directory upstream while modified locally: refused, nothing changed', async () => {
    const root = tempDir();
    dirs.push(root);
    materialize(join(root, 'base'), { 'foo.conf': f('a'), other: f('1') });
    materialize(join(root, 'etc'), { 'foo.conf': f('local'), other: f('1') });
    materialize(join(root, 'new'), { 'foo.conf': d(), 'foo.conf/x': f('x'), other: f('2') });
    const before = snapshot(join(root, 'etc'));
    const err = await planEtcMerge({ base: join(root, 'base'), current: join(root, 'etc'), new: join(root, 'new') }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PivotError);
    expect((err as PivotError).kind).toBe('etc-conflict');
    expect((err as PivotError).exitCode).toBe(7);
    expect((err as PivotError).path).toBe('foo.conf');
    expect((err as PivotError).oneLine()).toMatch(/directory.*Fix: move the local file aside/);
    expect(snapshot(join(root, 'etc'))).toEqual(before);
  });

  it('16. directory -> file upstream: replaced when untouched, kept with its local content otherwise', async () => {
    const { etc } = await merge(
      { plain: d(), 'plain/x': f('x'), busy: d(), 'busy/x': f('x'), 'busy/y': f('y') },
      { plain: d(), 'plain/x': f('x'), busy: d(), 'busy/x': f('x'), 'busy/y': f('y'), 'busy/local': f('mine') },
      { plain: f('now a file'), busy: f('now a file') },
    );
    expect(read(etc, 'plain')).toBe('now a file');
    expect(stat(etc, 'busy').type).toBe('dir');
    expect(readdirSync(join(etc, 'busy'))).toEqual(['local']);
  });

  it('16b. a directory re-moded or re-owned locally and removed or replaced upstream is kept whole, as ostree does', async () => {
    const { etc } = await merge(
      { moded: d(), 'moded/same': f('s'), 'moded/sub': d(), 'moded/sub/deep': f('d'), owned: d(), 'owned/same': f('s'), gone: d(), 'gone/x': f('x') },
      { moded: d(0o700), 'moded/same': f('s'), 'moded/sub': d(), 'moded/sub/deep': f('d'), owned: d(0o755, 1000), 'owned/same': f('s'), gone: d(), 'gone/x': f('x') },
      { owned: f('now a file') },
    );
    expect(stat(etc, 'moded')).toMatchObject({ type: 'dir', mode: 0o700 });
    expect(read(etc, 'moded/same')).toBe('s');
    expect(read(etc, 'moded/sub/deep')).toBe('d');
    expect(stat(etc, 'owned')).toMatchObject({ type: 'dir', uid: 1000 });
    expect(read(etc, 'owned/same')).toBe('s');
    // Control: the untouched directory removed upstream goes, children and all.
    expect(existsSync(join(etc, 'gone'))).toBe(false);
  });

  it('17. a new empty upstream directory is created with its metadata', async () => {
    const { etc } = await merge({}, {}, { empty: d(0o750, 0, 1000) });
    expect(stat(etc, 'empty')).toEqual({ type: 'dir', mode: 0o750, uid: 0, gid: 1000 });
    expect(readdirSync(join(etc, 'empty'))).toEqual([]);
  });

  it('18. paths with spaces, newlines, UTF-8 and 255-byte names', async () => {
    const long = 'L'.repeat(255);
    const utf = 'é'.repeat(127); // 254 bytes
    const names = ['with space', 'new\nline', ' lead', 'tab\there', 'ünïcödé €', long, utf, 'quote"back\\'];
    const base: Spec = {};
    const current: Spec = {};
    const next: Spec = {};
    for (const n of names) {
      base[`${n}/same`] = f('s');
      current[`${n}/same`] = f('s');
      next[`${n}/same`] = f('s2');
      current[`${n}/local`] = f('l');
      base[`${n}/gone`] = f('g');
      current[`${n}/gone`] = f('g');
      next[`${n}/${n}`] = f('nn');
    }
    const { etc } = await merge(base, current, next);
    for (const n of names) {
      expect(read(etc, `${n}/same`)).toBe('s2');
      expect(read(etc, `${n}/local`)).toBe('l');
      expect(existsSync(join(etc, n, 'gone'))).toBe(false);
      expect(read(etc, `${n}/${n}`)).toBe('nn');
    }
  });
});

describe('special files and xattrs', () => {
  it('FIFOs in current are left in place and reported; FIFOs in new are not created', async () => {
    const root = tempDir();
    dirs.push(root);
    materialize(join(root, 'base'), {});
    materialize(join(root, 'etc'), { pipe: { t: 'p' } });
    materialize(join(root, 'new'), { npipe: { t: 'p' } });
    const plan = await planEtcMerge({ base: join(root, 'base'), current: join(root, 'etc'), new: join(root, 'new') });
    expect(plan.ignored.map((g) => `${g.tree}:${g.path}`).sort()).toEqual(['current:pipe', 'new:npipe']);
    await applyEtcMerge(plan);
    expect(lstatSync(join(root, 'etc/pipe')).isFIFO()).toBe(true);
    expect(existsSync(join(root, 'etc/npipe'))).toBe(false);
  });

  it('an owner change from upstream keeps setuid/setgid bits (chown clears them)', async () => {
    const { etc } = await merge({ s: f('bin', 0o6755) }, { s: f('bin', 0o6755) }, { s: f('bin', 0o6755, 0, 1000) });
    expect(stat(etc, 's')).toEqual({ type: 'file', mode: 0o6755, uid: 0, gid: 1000 });
  });

  it('an xattr-only difference is not a local change', async () => {
    const { etc } = await merge({ a: f('v1') }, { a: f('v1', 0o644, 0, 0, { 'user.local': 'x' }) }, { a: f('v2') });
    expect(read(etc, 'a')).toBe('v2');
  });

  it('symlinks in current are never followed by the scan', async () => {
    const root = tempDir();
    dirs.push(root);
    materialize(join(root, 'outside'), { 'secret/file': f('s') });
    materialize(join(root, 'base'), {});
    materialize(join(root, 'etc'), {});
    symlinkSync(join(root, 'outside/secret'), join(root, 'etc/link'));
    materialize(join(root, 'new'), {});
    const plan = await planEtcMerge({ base: join(root, 'base'), current: join(root, 'etc'), new: join(root, 'new') });
    expect([...plan.current.keys()].sort()).toEqual(['', 'link']);
  });
});
