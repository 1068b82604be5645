// systemd-sysusers and systemd-tmpfiles, run by the refresh, enter SELinux domains of their own
// that may not use the agent's stdio sockets (seen in the VM: denied, and their messages lost).
// So their stdout and stderr are an anonymous pipe, and what they print still comes back.
import { describe, expect, it } from 'vitest';
import { runRefreshHelper } from '../../src/systemd/isolate.ts';

describe('runRefreshHelper', () => {
  it('gives the helper a pipe, not the agent\'s sockets, for stdout and stderr, and returns its output and status', async () => {
    const r = await runRefreshHelper('sh', ['-c', 'readlink /proc/self/fd/1 /proc/self/fd/2; echo oops >&2; exit 3']);
    expect(r.exitCode).toBe(3);
    const [out, err, msg] = r.stderr.split('\n');
    expect(out).toMatch(/^pipe:\[\d+\]$/);
    expect(err).toBe(out);
    expect(msg).toBe('oops');
  });
});
