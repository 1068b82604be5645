// A child's output when the child runs in an SELinux domain of its own.
import { execa } from 'execa';

/**
 * Runs a helper that enters a domain of its own (setfiles_t, systemd_sysusers_t,
 * systemd_tmpfiles_t) with its output captured. The
 * agent's child stdio are socketpairs labelled with the agent's domain, which the helper's domain
 * may not use: the kernel would close them on exec (with a denial) and the helper's error would
 * be lost. So a shell in the agent's domain runs it with stdout and stderr on an anonymous pipe
 * (labelled like the shell, and such domains may write to that), keeps the last lines, and
 * passes the exit status through. Nothing else reaches the helper: systemd starts the agent with
 * only stdio open, and Node opens everything else close-on-exec.
 */
export async function runThroughPipe(argv: readonly [string, ...string[]], keepLines = 20, timeoutMs?: number): Promise<{ exitCode: number; output: string }> {
  const script = [
    'exec 3>&1',
    `status=$( { { "$@" </dev/null 2>&1 3>&- 4>&-; echo $? >&4; } | tail -n ${keepLines} >&3; } 4>&1 )`,
    'exit "$status"',
  ].join('\n');
  const r = await execa('sh', ['-c', script, 'sh', ...argv], { reject: false, stdin: 'ignore', all: true, ...(timeoutMs ? { timeout: timeoutMs } : {}) });
  if (r.exitCode === undefined) throw Object.assign(new Error(`sh did not run: ${r.message}`), { code: 'ENOENT' });
  return { exitCode: r.exitCode, output: (r.all ?? '').trim() };
}
