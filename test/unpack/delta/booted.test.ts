// The booted side's facts: what identity.ts compares, read without following a symlink, and the
// inode's identity exact only where the ostree-object shortcut asks for it.
import { linkSync, lstatSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { factsOnDisk, identifiedFactsOnDisk } from '../../../src/unpack/delta/booted.ts';

const dir = mkdtempSync(join(tmpdir(), 'nip-booted-facts-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('facts of a booted path', () => {
  it('reads type, mode, owner, size and symlink target, with no inode identity', () => {
    const file = join(dir, 'f');
    writeFileSync(file, 'hello', { mode: 0o640 });
    symlinkSync('f', join(dir, 'l'));
    const st = lstatSync(file);
    expect(factsOnDisk(file)).toEqual({ type: 'file', mode: 0o640, uid: st.uid, gid: st.gid, size: 5, xattrs: new Map() });
    expect(factsOnDisk(join(dir, 'l'))).toMatchObject({ type: 'symlink', linkTarget: 'f' });
    expect(factsOnDisk(join(dir, 'missing'))).toBeUndefined();
  });

  it('gives the same facts with dev and ino as bigints when asked, equal across hardlinks', () => {
    const a = join(dir, 'a');
    writeFileSync(a, 'x');
    linkSync(a, join(dir, 'b'));
    const st = lstatSync(a, { bigint: true });
    const facts = identifiedFactsOnDisk(a);
    expect(facts).toEqual({ ...factsOnDisk(a), dev: st.dev, ino: st.ino });
    const other = identifiedFactsOnDisk(join(dir, 'b'));
    expect([other?.dev, other?.ino]).toEqual([st.dev, st.ino]);
    expect(identifiedFactsOnDisk(join(dir, 'missing'))).toBeUndefined();
  });
});
