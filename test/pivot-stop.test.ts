// requestStop against a whole runPivot with capabilities that do nothing: a stop after the pivot
// finished is not a failure, and one run's stop does not leak into the next run in the process.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseConfig, type Config } from '../src/config.ts';
import { requestStop, runPivot, type PivotCapabilities } from '../src/pivot.ts';
import { Progress } from '../src/progress.ts';
import { readState } from '../src/state.ts';

let dir: string;
let cfg: Config;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'nip-stop-'));
  cfg = parseConfig({ image: 'reg.example/node:1', stateDir: join(dir, 'state'), stagingDir: join(dir, 'staging') }, 'test');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function caps(over: Partial<PivotCapabilities> = {}): PivotCapabilities {
  const digest = `sha256:${'a'.repeat(64)}`;
  return {
    resolve: async () => ({ reference: 'reg.example/node:1', manifestDigest: digest, compressedBytes: 1, layerCount: 1 }),
    pull: async () => ({ root: join(dir, 'staging', 'a'), reused: false, facts: {} }),
    label: async () => ({ skipped: 'test' }),
    planEtc: async () => ({ plan: {}, summary: { actions: 0, counts: {}, warnings: [], conflicts: [], text: '' } }),
    mountUsr: async () => ({ undo: async () => undefined, facts: {} }),
    prepareStaging: async () => ({ freeBytes: 2 ** 40, facts: { filesystem: 'disk', inRam: false, reason: 'test' } }),
    usrIsPivotedTo: async () => false,
    applyEtc: async () => ({}),
    recoverEtc: async () => 'none',
    recoverMounts: async () => [],
    pendingEtcJournal: () => 'none',
    refresh: async () => ({}),
    isolate: async () => ({}),
    settle: async () => undefined,
    stagedPath: () => join(dir, 'staging', 'a'),
    ...over,
  };
}

const progress = (): Progress => new Progress({ notify: async () => undefined, tty: false });

describe('a stop signal and the state file', () => {
  it('a SIGTERM during the final reload leaves done as done and says the run finished', async () => {
    let answer: string | undefined;
    const out = await runPivot({ cfg, isolate: true, dryRun: false, progress: progress(), caps: caps({
      settle: async () => {
        answer = requestStop('SIGTERM');
      },
    }) });
    expect(answer).toBe('finished');
    expect(out.result).toBe('done');
    expect(readState(cfg.stateDir)?.result).toBe('done');
    expect(readState(cfg.stateDir)?.error).toBeUndefined();
  });

  it('a stop in one run does not interrupt the next run in the same process', async () => {
    const stopped = runPivot({ cfg, isolate: false, dryRun: false, progress: progress(), caps: caps({
      // etc-apply is critical: the stop is deferred, and the next phase turns it into a failure.
      applyEtc: async () => {
        expect(requestStop('SIGTERM')).toBe('deferred');
        return {};
      },
    }) });
    await expect(stopped).rejects.toMatchObject({ kind: 'interrupted' });
    expect(readState(cfg.stateDir)).toMatchObject({ result: 'failed', error: { kind: 'interrupted' } });
    expect(readState(cfg.stateDir)?.phases.at(-1)).toMatchObject({ name: 'etc-apply', result: 'done' });
    const next = await runPivot({ cfg, isolate: false, dryRun: false, progress: progress(), caps: caps() });
    expect(next.result).toBe('done');
    expect(readState(cfg.stateDir)?.result).toBe('done');
  });
});
