// The cause of a stuck pivot where an operator at the console looks: the login prompt. agetty
// prints /etc/issue plus every *.issue file of /etc/issue.d and /run/issue.d (the directories
// console-login-helper-messages uses on CoreOS), so a failed or retrying run leaves its one line
// there, on the VGA console and the serial line alike, and a successful run removes it. Without
// it, a node that retries forever shows nothing but a login prompt (docs/pivot.md).
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { NOT_RETRIED_EXIT_CODES, type ExitCode, type PivotError } from './errors.ts';
import { log } from './log.ts';

export const DEFAULT_ISSUE_DIR = '/run/issue.d';
/** Tests point runs at their own directory; a node never sets this. */
export const ISSUE_DIR_ENV = 'NODE_IMAGE_PIVOT_ISSUE_DIR';
export const ISSUE_FILE = 'node-image-pivot.issue';

export function issueFilePath(): string {
  return join(process.env[ISSUE_DIR_ENV] || DEFAULT_ISSUE_DIR, ISSUE_FILE);
}

/** agetty expands backslash escapes (\n is the hostname, \4 an address) in issue files. */
export function escapeIssue(text: string): string {
  return text.replace(/\\/g, '\\\\');
}

/** Pure: the snippet for a failed run: what failed, whether systemd retries it, the one line. */
export function issueText(e: Pick<PivotError, 'exitCode' | 'oneLine'>, attempt: number | undefined, at: Date): string {
  const retried = !NOT_RETRIED_EXIT_CODES.includes(e.exitCode as ExitCode);
  const what = retried
    ? `node-image-pivot: the pivot to the node image failed${attempt ? ` (attempt ${attempt})` : ''} and is retried`
    : 'node-image-pivot: the pivot to the node image failed and is not retried until the cause is fixed';
  return [
    `${what}, exit ${e.exitCode}, at ${at.toISOString()}:`,
    `  ${escapeIssue(e.oneLine())}`,
    '  More: journalctl -u node-image-pivot; node-image-pivot status',
    '',
    '',
  ].join('\n');
}

/** Makes running agettys reprint the prompt with the new issue text (util-linux 2.33+). */
function reloadAgetty(): void {
  try {
    const child = spawn('agetty', ['--reload'], { stdio: 'ignore' });
    child.on('error', () => undefined);
    child.unref();
  } catch {
    // no agetty (a container): nobody is looking at a console
  }
}

/** Best effort: the console is a courtesy; failing to write it must never change the run's result. */
export function showFailureOnConsole(e: PivotError, attempt: number | undefined, path = issueFilePath()): void {
  try {
    mkdirSync(join(path, '..'), { recursive: true, mode: 0o755 });
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, issueText(e, attempt, new Date()), { mode: 0o644 });
    renameSync(tmp, path);
    reloadAgetty();
  } catch (err) {
    log().warn({ path, code: (err as NodeJS.ErrnoException).code }, `cannot write the console message ${path}`);
  }
}

export function clearConsole(path = issueFilePath()): void {
  if (!existsSync(path)) return;
  try {
    rmSync(path, { force: true });
    reloadAgetty();
  } catch (err) {
    log().warn({ path, code: (err as NodeJS.ErrnoException).code }, `cannot remove the console message ${path}`);
  }
}
