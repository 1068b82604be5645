import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { ExitCode, NOT_RETRIED_EXIT_CODES, PivotError, asPivotError } from '../src/errors.ts';

describe('PivotError', () => {
  it('renders cause, location and fix on one line', () => {
    const e = new PivotError('unpack', 'bad entry\nwith newline', { path: '/a b', field: 'layers[2]', fix: 'rebuild the image' });
    expect(e.oneLine()).toBe('unpack: bad entry with newline (field layers[2], path "/a b"). Fix: rebuild the image');
    expect(e.oneLine()).not.toContain('\n');
    expect(e.exitCode).toBe(ExitCode.unpack);
  });

  it('maps kinds to the documented exit codes and retry classes', () => {
    const cases: Array<[ConstructorParameters<typeof PivotError>[0], number, boolean]> = [
      ['config', 2, true], ['auth', 3, false], ['network', 3, false], ['verification', 4, true],
      ['path-safety', 5, true], ['mount', 6, false], ['etc-conflict', 7, true], ['systemd', 8, false],
      ['preflight', 9, false], ['interrupted', 10, false], ['busy', 11, false], ['selinux', 12, false],
    ];
    for (const [kind, code, permanent] of cases) {
      const e = new PivotError(kind, 'x', { fix: 'y' });
      expect([kind, e.exitCode, e.permanent]).toEqual([kind, code, permanent]);
    }
  });

  it('wraps foreign errors as internal, keeping errno code and path', () => {
    const errno = Object.assign(new Error('no such file'), { code: 'ENOENT', path: '/x' });
    const e = asPivotError(errno);
    expect(e.kind).toBe('internal');
    expect(e.message).toBe('ENOENT: no such file');
    expect(e.path).toBe('/x');
    expect(e.exitCode).toBe(1);
    const same = new PivotError('mount', 'm', { fix: 'f' });
    expect(asPivotError(same)).toBe(same);
  });
});

describe('README exit codes', () => {
  it('the table lists every exit code, in order', () => {
    const readme = readFileSync('README.md', 'utf8');
    const table = readme.slice(readme.indexOf('## Exit codes'), readme.indexOf('`status` has its own'));
    const codes = [...table.matchAll(/^\| (\d+) \|/gm)].map((m) => Number(m[1]));
    expect(codes).toEqual(Object.values(ExitCode));
  });
});

describe('retry policy', () => {
  it('the units stop retrying on exactly the exit codes the agent treats as not retried', () => {
    for (const unit of ['units/node-image-pivot.service', 'units/node-image-overlay.service']) {
      const line = /^RestartPreventExitStatus=(.*)$/m.exec(readFileSync(unit, 'utf8'))?.[1];
      expect(line?.split(/\s+/).map(Number), unit).toEqual([...NOT_RETRIED_EXIT_CODES]);
    }
  });
});
