import { describe, expect, it } from 'vitest';
import { Progress, formatProgress, progressBar } from '../src/progress.ts';

describe('progress', () => {
  it('formats phase, detail and byte counts', () => {
    expect(formatProgress({ phase: 'pull', detail: 'layer 3/8', done: 412 * 1024 ** 2, total: 980.5 * 1024 ** 2, unit: 'bytes' }))
      .toBe('pull: layer 3/8, 412.0/980.5 MiB (42%)');
    expect(formatProgress({ phase: 'etc-apply', done: 5, unit: 'actions' })).toBe('etc-apply: 5 actions');
    expect(formatProgress({ phase: 'mount' })).toBe('mount');
    expect(progressBar(1, 4, 8)).toBe('[##......]');
    expect(progressBar(9, 4, 4)).toBe('[####]');
  });

  it('sends phase changes at once and throttles updates within a phase', async () => {
    const sent: string[] = [];
    const p = new Progress({ notify: async (f) => { sent.push(`${Object.keys(f).join(',')} ${f.STATUS}`); }, tty: false, intervalMs: 60_000 });
    p.phase('pull');
    for (let i = 1; i <= 100; i++) p.update({ phase: 'pull', done: i, total: 100, unit: 'entries' });
    p.phase('mount');
    await p.finalStatus('pivoted');
    expect(sent).toEqual(['STATUS pull', 'STATUS mount', 'STATUS pivoted']);
  });
});
