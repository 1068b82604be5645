import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { inConfigTerms, loadConfig, parseConfig, fieldPath } from '../src/config.ts';
import { PivotError } from '../src/errors.ts';
import { parseReference } from '../src/registry/reference.ts';
import { thrown } from './helpers/thrown.ts';


describe('config', () => {
  it('fills defaults for a minimal config', () => {
    const c = parseConfig({ image: 'quay.io/x/node@sha256:' + 'a'.repeat(64) }, 'c.json');
    expect(c.preserve).toEqual(['/usr/lib/modules']);
    expect(c.restartUnits).toEqual(['sshd.service']);
    expect(c.isolateTarget).toBe('multi-user.target');
    expect(c.limits.maxPathLength).toBe(4096);
    expect(c.timeouts.isolateSeconds).toBe(900);
  });

  it('staging defaults to auto and takes only full, delta or auto', () => {
    expect(parseConfig({ image: 'x' }, 'c.json').staging).toBe('auto');
    expect(parseConfig({ image: 'x', staging: 'delta' }, 'c.json').staging).toBe('delta');
    const e = thrown(() => parseConfig({ image: 'x', staging: 'deltas' }, '/etc/nip.json'));
    expect([e.kind, e.field, e.exitCode]).toEqual(['config', 'staging', 2]);
  });

  it('names file, field and expectation for a wrong type', () => {
    const e = thrown(() => parseConfig({ image: 'x', concurrency: 'three' }, '/etc/nip.json'));
    expect(e.field).toBe('concurrency');
    expect(e.path).toBe('/etc/nip.json');
    expect(e.message).toMatch(/\/etc\/nip\.json: concurrency: expected number/);
    expect(e.exitCode).toBe(2);
  });

  it('rejects unknown fields, even nested ones', () => {
    expect(thrown(() => parseConfig({ image: 'x', imagee: 'y' }, 'f')).field).toBe('imagee');
    expect(thrown(() => parseConfig({ image: 'x', limits: { maxEntry: 1 } }, 'f')).field).toBe('limits.maxEntry');
  });

  it('points into arrays', () => {
    const e = thrown(() => parseConfig({ image: 'x', skipIfPathExists: ['/ok', 'relative'] }, 'f'));
    expect(e.field).toBe('skipIfPathExists[1]');
    expect(e.message).toMatch(/absolute path/);
    expect(thrown(() => parseConfig({ image: 'x', restartUnits: ['sshd'] }, 'f')).field).toBe('restartUnits[0]');
    expect(thrown(() => parseConfig({ image: 'x', preserve: ['/etc/x'] }, 'f')).message).toMatch(/under \/usr/);
  });

  it('requires exactly one of image and releaseImage', () => {
    expect(thrown(() => parseConfig({}, 'f')).field).toBe('image');
    expect(thrown(() => parseConfig({ image: 'a', releaseImage: 'b' }, 'f')).field).toBe('releaseImage');
  });

  it('reports missing, unreadable and malformed files with the path', () => {
    const dir = mkdtempSync(join(tmpdir(), 'nip-config-'));
    expect(thrown(() => loadConfig(join(dir, 'none.json'))).message).toMatch(/does not exist/);
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{ "image": ');
    const e = thrown(() => loadConfig(bad));
    expect(e.message).toMatch(/not valid JSON/);
    expect(e.path).toBe(bad);
    const dirAsFile = join(dir);
    expect(thrown(() => loadConfig(dirAsFile)).message).toMatch(/is not a regular file \(it is a directory\)/);
    // A FIFO would block the read forever; it is refused without opening it.
    execFileSync('mkfifo', [join(dir, 'fifo.json')]);
    expect(thrown(() => loadConfig(join(dir, 'fifo.json'))).message).toMatch(/is not a regular file \(it is a FIFO\)/);
    const ok = join(dir, 'ok.json');
    writeFileSync(ok, JSON.stringify({ releaseImage: 'quay.io/r/release:4.20', component: 'rhel-coreos' }));
    chmodSync(ok, 0o600);
    expect(loadConfig(ok).releaseImage).toBe('quay.io/r/release:4.20');
  });

  it('formats field paths the way JSON reads', () => {
    expect(fieldPath(['limits', 'maxEntries'])).toBe('limits.maxEntries');
    expect(fieldPath(['preserve', 2])).toBe('preserve[2]');
    expect(fieldPath([])).toBe('(top level)');
  });
});

describe('inConfigTerms', () => {
  const cfg = parseConfig({ releaseImage: 'quay.io/r/Release:1', authfile: '/a/auth.json', certDir: '/c' }, 'f');
  it('names the config field for reference and file errors from the registry client', () => {
    // The parser's own error, recognised by its reason, never by its text.
    const ref = thrown(() => parseReference('quay.io/r/Release:1'));
    const mapped = inConfigTerms(ref, cfg) as PivotError;
    expect([mapped.kind, mapped.field, mapped.exitCode]).toEqual(['config', 'releaseImage', 2]);
    expect(mapped.oneLine()).toContain('field releaseImage');
    const file = new PivotError('config', 'auth file /a/auth.json cannot be read: ENOENT', { path: '/a/auth.json', fix: 'pass --authfile' });
    expect((inConfigTerms(file, cfg) as PivotError).field).toBe('authfile');
    expect((inConfigTerms(new PivotError('config', 'x', { path: '/c/ca.crt', fix: 'y' }), cfg) as PivotError).field).toBe('certDir');
  });
  it('leaves other errors alone', () => {
    const net = new PivotError('network', 'down', { fix: 'retry' });
    expect(inConfigTerms(net, cfg)).toBe(net);
    const other = new PivotError('config', 'unrelated', { path: '/elsewhere', fix: 'y' });
    expect(inConfigTerms(other, cfg)).toBe(other);
  });
});
