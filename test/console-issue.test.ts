import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PivotError } from '../src/errors.ts';
import { clearConsole, issueText, showFailureOnConsole } from '../src/console-issue.ts';

let dir: string;
beforeEach(() => { dir = mkdtempSync(join(tmpdir(), 'nip-issue-')); });
afterEach(() => { rmSync(dir, { recursive: true, force: true }); });

describe('console issue snippet', () => {
  const at = new Date('2026-01-02T03:04:05.000Z');

  it('says whether systemd retries, and gives the one line with its fix, escaping agetty backslashes', () => {
    const net = new PivotError('network', 'cannot connect to quay.io:443 (ECONNREFUSED)', { fix: 'check the proxy at C:\\proxy' });
    expect(issueText(net, 3, at)).toBe([
      'node-image-pivot: the pivot to the node image failed (attempt 3) and is retried, exit 3, at 2026-01-02T03:04:05.000Z:',
      '  network: cannot connect to quay.io:443 (ECONNREFUSED). Fix: check the proxy at C:\\\\proxy',
      '  More: journalctl -u node-image-pivot; node-image-pivot status', '', '',
    ].join('\n'));
    const conflict = new PivotError('etc-conflict', '/etc/x changed both ways', { path: '/etc/x', fix: 'resolve it' });
    expect(issueText(conflict, 1, at)).toMatch(/^node-image-pivot: the pivot to the node image failed and is not retried until the cause is fixed, exit 7/);
  });

  it('writes the file on failure and removes it on success', () => {
    const path = join(dir, 'issue.d', 'node-image-pivot.issue');
    showFailureOnConsole(new PivotError('network', 'down', { fix: 'bring it up' }), 2, path);
    expect(readFileSync(path, 'utf8')).toMatch(/attempt 2.*\n {2}network: down\. Fix: bring it up\n/);
    clearConsole(path);
    expect(existsSync(path)).toBe(false);
    clearConsole(path);
  });

  it('a console that cannot be written never turns into an error', () => {
    writeFileSync(join(dir, 'not-a-dir'), '');
    expect(() => showFailureOnConsole(new PivotError('network', 'down', { fix: 'f' }), 1, join(dir, 'not-a-dir', 'x.issue'))).not.toThrow();
  });
});
