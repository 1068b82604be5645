// The delta-only steps of the pull around src/unpack/delta: the staging record a rerun trusts,
// ostree's etc/ becoming the delta's opaque usr/etc, and a full staging filesystem as exit 9.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PivotError } from '../src/errors.ts';
import { stagingFullError } from '../src/staging-fs.ts';
import { STAGING_RECORD, moveDeltaEtcDefaults, readStagingRecord, writeStagingRecord } from '../src/staging-delta.ts';
import { OPAQUE_XATTR } from '../src/unpack/delta/overlay-marks.ts';
import { xattrs } from '../src/xattr.ts';
import { thrown } from './helpers/thrown.ts';

let dir: string;
beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'nip-staging-delta-')); });
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('the staging record', () => {
  it('round-trips the mode, the reason and the delta counts', () => {
    const delta = { skipped: 3, skippedBytes: 30, objectsInBootedRepo: 0, contentCompared: 2, materialized: 0, whiteouts: 1, opaqueDirs: 1 };
    writeStagingRecord(dir, { mode: 'delta', reason: 'because', delta });
    expect(readStagingRecord(dir)).toEqual({ mode: 'delta', reason: 'because', delta });
  });

  it('a tree without one was staged in full by an older agent', () => {
    expect(readStagingRecord(dir).mode).toBe('full');
  });

  it('an unreadable one is refused with the fix, never guessed', () => {
    for (const text of ['{"mode":"half"}', 'not json']) {
      writeFileSync(join(dir, STAGING_RECORD), text);
      const err = thrown(() => readStagingRecord(dir));
      expect(err).toBeInstanceOf(PivotError);
      expect(err).toMatchObject({ kind: 'unpack', path: join(dir, STAGING_RECORD), fix: `remove ${dir} and run again: the pull stages it anew` });
    }
  });
});

describe('moveDeltaEtcDefaults', () => {
  const root = process.getuid?.() === 0;

  it.runIf(root)('replaces the whiteout at usr/etc with the image\'s etc/, made opaque', () => {
    mkdirSync(join(dir, 'etc'));
    writeFileSync(join(dir, 'etc/issue'), 'new\n');
    mkdirSync(join(dir, 'usr'));
    execFileSync('mknod', [join(dir, 'usr/etc'), 'c', '0', '0']);
    expect(moveDeltaEtcDefaults(dir)).toBe(true);
    expect(readFileSync(join(dir, 'usr/etc/issue'), 'utf8')).toBe('new\n');
    expect(xattrs().getAttributeSync(join(dir, 'usr/etc'), OPAQUE_XATTR)?.toString()).toBe('y');
  });

  it('leaves a real usr/etc alone (an image that ships its defaults there)', () => {
    mkdirSync(join(dir, 'etc'));
    mkdirSync(join(dir, 'usr/etc'), { recursive: true });
    expect(moveDeltaEtcDefaults(dir)).toBe(false);
    expect(statSync(join(dir, 'etc')).isDirectory()).toBe(true);
    expect(xattrs().listAttributesSync(join(dir, 'usr/etc'))).not.toContain(OPAQUE_XATTR);
  });
});

describe('stagingFullError', () => {
  const at = { mode: 'delta' as const, compressedBytes: 95 * 1024 ** 2 };

  it('turns ENOSPC anywhere in the chain into exit 9 with the numbers', () => {
    const errno = Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', syscall: 'write' });
    const wrapped = new PivotError('unpack', 'layer 2/2: cannot write "usr/lib/x": ENOSPC in write', { fix: 'f', facts: { code: 'ENOSPC' }, cause: errno });
    for (const err of [errno, wrapped, new Error('outer', { cause: errno })]) {
      const e = stagingFullError(err, { ...at, stagingDir: dir });
      expect(e).toMatchObject({ kind: 'preflight', exitCode: 9, path: dir, facts: { code: 'ENOSPC', stagingMode: 'delta' } });
      expect(e!.message).toMatch(new RegExp(`^the staging filesystem at ${dir} \\(\\d+ MiB, \\d+ MiB still used by the blob cache and other files\\) filled up during the delta pull of 95 MiB compressed \\(ENOSPC\\)`));
    }
  });

  it('leaves every other failure as it is', () => {
    expect(stagingFullError(new PivotError('unpack', 'corrupt', { fix: 'f' }), { ...at, stagingDir: dir })).toBeUndefined();
    expect(stagingFullError(Object.assign(new Error('x'), { code: 'EACCES' }), { ...at, stagingDir: dir })).toBeUndefined();
  });
});
