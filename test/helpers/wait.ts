// The one way tests wait: for a condition, polled with a delay between polls, up to a deadline
// that is generous because CI machines are loaded. Never a fixed sleep.
import { setTimeout as delay } from 'node:timers/promises';

export async function waitFor<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  opts: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<T> {
  const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
  for (;;) {
    const got = await probe();
    if (got !== undefined && got !== false) return got;
    if (Date.now() > deadline) throw new Error(`timed out after ${opts.timeoutMs ?? 60_000} ms waiting for ${what}`);
    await delay(opts.intervalMs ?? 50);
  }
}
