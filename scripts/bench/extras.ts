// The three smaller numbers: /etc merge time, bytes `resolve` fetches, and pivot overhead.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { GeneratedImage } from './gen-image.ts';
import { median } from './report.ts';
import { exec } from './runners.ts';

/** scripts/bench/etc-merge.ts (5,000 files, 10% local changes) on the staging tmpfs, REPS times. */
export async function etcMergeBench(root: string, stage: string, reps: number): Promise<Record<string, unknown>> {
  const runs: Array<{ planMs: number; applyMs: number; totalMs: number; actions: number; scanned: number }> = [];
  for (let i = 0; i < reps; i++) {
    const r = spawnSync(process.execPath, [join(root, 'scripts/bench/etc-merge.ts'), '--files', '5000', '--dir', stage], { encoding: 'utf8' });
    if (r.status !== 0) return { unavailable: `etc-merge.ts failed: ${r.stderr.trim().split('\n').slice(-2).join(' | ')}` };
    runs.push(JSON.parse(r.stdout.trim().split('\n').at(-1)!) as (typeof runs)[number]);
  }
  return {
    files: 5000,
    scanned: runs[0]?.scanned,
    actions: runs[0]?.actions,
    planMsMedian: median(runs.map((r) => r.planMs)),
    applyMsMedian: median(runs.map((r) => r.applyMs)),
    totalMsMedian: median(runs.map((r) => r.totalMs)),
    totalMs: runs.map((r) => r.totalMs),
  };
}

/** What `resolve` fetches from a release image whose top layer holds release-manifests/. */
export async function resolveBench(binary: string, ref: string, conf: string, release: GeneratedImage): Promise<Record<string, unknown>> {
  try {
    const r = await exec([binary, 'resolve', ref, '--component', 'rhel-coreos', '--registries-conf', conf, '--json'], { env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' } });
    const out = JSON.parse(r.stdout) as { pullspec: string; bytesFetched: number; imageBytes: number };
    const top = release.layers.at(-1)!;
    return {
      bytesFetched: out.bytesFetched,
      imageBytes: out.imageBytes,
      fraction: Math.round((out.bytesFetched / out.imageBytes) * 10000) / 10000,
      topLayerBytes: top.size,
      seconds: Math.round(r.seconds * 100) / 100,
    };
  } catch (err) {
    return { unavailable: (err as Error).message };
  }
}

interface Phase { name: string; startedAt: string; endedAt?: string; seconds?: number; result: string }

/** From a pivot state.json: "pull done" to "isolate done". */
export function pivotOverhead(stateFile: string | undefined): Record<string, unknown> {
  const file = stateFile ?? process.env.NIP_BENCH_STATE_FILE;
  if (!file) return { unavailable: 'no state file given (--state-file, from an e2e pivot run: /run/node-image-pivot/state.json in the machine)' };
  if (!existsSync(file)) return { unavailable: `state file ${file} does not exist` };
  const state = JSON.parse(readFileSync(file, 'utf8')) as { phases: Phase[]; result: string };
  const pull = state.phases.find((p) => p.name === 'pull');
  const isolate = state.phases.find((p) => p.name === 'isolate');
  if (!pull?.endedAt || !isolate?.endedAt) return { unavailable: `state file ${file} has no finished pull and isolate phases (result ${state.result})` };
  const after = state.phases.slice(state.phases.indexOf(pull) + 1);
  return {
    stateFile: file,
    overheadSeconds: Math.round((Date.parse(isolate.endedAt) - Date.parse(pull.endedAt))) / 1000,
    phases: Object.fromEntries(after.map((p) => [p.name, p.seconds])),
  };
}
