// Full and delta staging side by side (issue 14, part 5): real pivots in nspawn machines, one
// per round, alternating full, delta, full, delta... against one node image whose /usr is ~90%
// identical to the machine's booted /usr (scripts/bench/delta-image.ts), on a loopback registry.
// The config of each machine says `staging: "full"` or `"delta"`; the agent stages under
// /run/node-image-pivot/staging, on a tmpfs of its own (the guest's /run is a tmpfs).
//
// Measured per round, from the host:
//   - the pull phase's facts and every phase's seconds from the guest's state.json;
//   - statfs of the staging tmpfs while the pivot runs (peak) and once it is done (held);
//   - the agent's VmHWM over the whole run (polled; the facts' peakRssBytes is at pull's end);
//   - the regular-file bytes of the staged tree (the delta's, or the full tree's, expanded bytes).
// The guest is read through /proc/<its PID 1>/root, which resolves in its mount namespace.
// NIP_BENCH_TIMELINE=DIR also writes DIR/<mode>-<round>.json per round: every 10 ms reading of
// the agent's RssAnon and VmRSS, the phases and the agent's journal, to see when memory peaks.
import { lstatSync, readdirSync, readFileSync, readlinkSync, mkdtempSync, rmSync, statSync, statfsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootMachine, type Machine } from '../testbed/machine.ts';
import { ensureRootfs } from '../testbed/rootfs.ts';
import { installInto } from '../../test/e2e/pivot-fixture.ts';
import { startRegistry } from '../../test/helpers/registry.ts';
import { waitFor } from '../../test/helpers/wait.ts';
import { pushDeltaImage, type DeltaImageFacts } from './delta-image.ts';
import { stagingVerdicts, formatStagingModes, type Mode, type ModeRow, type StagingModesVerdicts } from './staging-report.ts';

const STAGING = 'run/node-image-pivot/staging';
const STATE = 'run/node-image-pivot/state.json';

interface Phase { name: string; startedAt: string; endedAt?: string; seconds?: number; result: string; facts?: Record<string, unknown> }
interface State { result: string; attempt?: number; phases: Phase[]; error?: { line: string; exitCode: number } }

/** Polls the staging tmpfs and the agent's memory every 10 ms until stopped. */
class Sampler {
  peakStagingBytes = 0;
  peakRssBytes = 0;
  /** Peak RssAnon: the agent's own memory, without the executable's file pages VmHWM counts. */
  peakAnonBytes = 0;
  /** user+system seconds of each agent process, last reading (clock ticks are 1/100 s on Linux). */
  private readonly cpu = new Map<number, number>();
  ownTmpfs = false;
  private readonly timer: NodeJS.Timeout;
  private agents: number[] = [];
  private lastScan = 0;
  private readonly ns: string;
  private readonly leader: number;
  /** Every reading, for NIP_BENCH_TIMELINE: [epoch ms, RssAnon kB, VmRSS kB]. */
  readonly timeline: Array<[number, number, number]> = [];

  constructor(leader: number) {
    this.leader = leader;
    this.ns = readlinkSync(`/proc/${leader}/ns/pid`);
    this.timer = setInterval(() => { this.sample(); }, 10);
  }

  /**
   * The agent's processes: in the guest's PID namespace, running the agent's executable (by exe,
   * not comm: the generator script's comm is "node-image-pivo" too). Rescanned at most every 100 ms.
   */
  private scan(): void {
    const now = Date.now();
    if (now - this.lastScan < 100) return;
    this.lastScan = now;
    const found: number[] = [];
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      try {
        if (readlinkSync(`/proc/${name}/ns/pid`) === this.ns && /\/node-image-pivot( \(deleted\))?$/.test(readlinkSync(`/proc/${name}/exe`))) found.push(Number(name));
      } catch {
        // gone meanwhile
      }
    }
    this.agents = found;
  }

  sample(): void {
    const root = `/proc/${this.leader}/root`;
    try {
      // Only the agent's own tmpfs counts: before it is mounted the path is on the guest's /run.
      if (statSync(join(root, STAGING)).dev !== statSync(join(root, 'run')).dev) {
        this.ownTmpfs = true;
        this.peakStagingBytes = Math.max(this.peakStagingBytes, usedBytes(join(root, STAGING)));
      }
    } catch {
      // not there yet
    }
    const alive = this.agents.filter((pid) => {
      try {
        const status = readFileSync(`/proc/${pid}/status`, 'utf8');
        const hwm = /VmHWM:\s+(\d+) kB/.exec(status);
        const anon = /RssAnon:\s+(\d+) kB/.exec(status);
        const rss = /VmRSS:\s+(\d+) kB/.exec(status);
        if (process.env.NIP_BENCH_TIMELINE && anon && rss) this.timeline.push([Date.now(), Number(anon[1]), Number(rss[1])]);
        if (hwm) this.peakRssBytes = Math.max(this.peakRssBytes, Number(hwm[1]) * 1024);
        if (anon) this.peakAnonBytes = Math.max(this.peakAnonBytes, Number(anon[1]) * 1024);
        // Fields 14 and 15 (utime, stime) after the parenthesised comm.
        const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
        const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        this.cpu.set(pid, (Number(f[11]) + Number(f[12])) / 100);
        return true;
      } catch {
        return false;
      }
    });
    if (alive.length === 0) this.scan();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** CPU seconds of the agent's processes, as last seen (the final 10 ms before an exit are missed). */
  get cpuSeconds(): number {
    return [...this.cpu.values()].reduce((a, b) => a + b, 0);
  }
}

function usedBytes(path: string): number {
  const s = statfsSync(path);
  return (Number(s.blocks) - Number(s.bfree)) * Number(s.bsize);
}

/** Regular-file bytes (each inode once), files and whiteouts (0/0 character devices) under dir. */
export function treeBytes(dir: string): { bytes: number; files: number; whiteouts: number } {
  const seen = new Set<number>();
  let bytes = 0;
  let files = 0;
  let whiteouts = 0;
  const walk = (d: string): void => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const st = lstatSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && !seen.has(st.ino)) {
        seen.add(st.ino);
        bytes += st.size;
        files++;
      } else if (st.isCharacterDevice() && st.rdev === 0) whiteouts++;
    }
  };
  walk(dir);
  return { bytes, files, whiteouts };
}

const num = (x: unknown): number | undefined => (typeof x === 'number' ? x : undefined);

async function oneRound(mode: Mode, round: number, image: { ref: string; host: string }, binary: string, say: (s: string) => void): Promise<ModeRow> {
  let sampler: Sampler | undefined;
  const m: Machine = await bootMachine({
    name: `nip-bench-${mode}`,
    agentBinary: binary,
    prepare: (root) => installInto(root, { image: image.ref, registryHost: image.host, config: { staging: mode } }),
  });
  try {
    sampler = new Sampler(m.leaderPid);
    const root = `/proc/${m.leaderPid}/root`;
    // The state file says done once isolate has finished; a failed run is retried by the unit,
    // so a failure is only final when it is not retried (exit codes 2, 4, 7) - the deadline catches the rest.
    const state = await waitFor(() => {
      let s: State;
      try {
        s = JSON.parse(readFileSync(join(root, STATE), 'utf8')) as State;
      } catch {
        return undefined;
      }
      if (s.result === 'failed' && s.error && [2, 4, 7].includes(s.error.exitCode)) throw new Error(`the ${mode} pivot failed: ${s.error.line}`);
      return s.result === 'done' ? s : undefined;
    }, `the ${mode} pivot's state.json to say done`, { timeoutMs: 900_000, intervalMs: 50 });
    await m.waitForUnit('multi-user.target', 'active', 300_000);
    sampler.sample();
    sampler.stop();
    const pull = state.phases.find((p) => p.name === 'pull');
    const mount = state.phases.find((p) => p.name === 'mount');
    if ((state.attempt ?? 1) > 1 || !pull?.facts || pull.facts.reused) {
      // A retried run reuses the tree the failed one staged: no pull to measure, and a defect to show.
      const log = (await m.journal('node-image-pivot.service')).split('\n').filter((l) => /error|fail|exit/i.test(l)).slice(-8).join('\n');
      throw new Error(`the ${mode} pivot took ${state.attempt ?? 1} attempts (pull reused: ${String(pull?.facts?.reused)}); the agent's log:\n${log}`);
    }
    const digest = state.phases.find((p) => p.name === 'resolve')?.facts?.manifestDigest;
    if (typeof digest !== 'string') throw new Error('the state file names no manifest digest');
    const staged = join(root, STAGING, digest.replace(/^sha256:/, ''));
    const tree = treeBytes(staged);
    const first = state.phases[0]!;
    const last = state.phases.at(-1)!;
    const f = pull.facts;
    const row: ModeRow = {
      requested: mode, round,
      ran: typeof f.stagingMode === 'string' ? f.stagingMode : undefined,
      reason: typeof f.stagingModeReason === 'string' ? f.stagingModeReason : undefined,
      pullSeconds: pull.seconds ?? 0,
      pivotSeconds: (Date.parse(last.endedAt ?? last.startedAt) - Date.parse(first.startedAt)) / 1000,
      heldBytes: sampler.ownTmpfs ? usedBytes(join(root, STAGING)) : Number.NaN,
      peakStagingBytes: sampler.peakStagingBytes,
      treeFileBytes: tree.bytes, treeFiles: tree.files, whiteouts: tree.whiteouts,
      factsUsedBytes: num(f.stagingUsedBytes), factsPeakRssBytes: num(f.peakRssBytes),
      expandedBytes: num(f.expandedBytes), compressedBytes: num(f.compressedBytes),
      polledPeakRssBytes: sampler.peakRssBytes || undefined,
      polledPeakAnonBytes: sampler.peakAnonBytes || undefined,
      agentCpuSeconds: sampler.cpuSeconds || undefined,
      pacedGc: typeof f.pacedGc === 'object' && f.pacedGc ? f.pacedGc as ModeRow['pacedGc'] : undefined,
      delta: typeof f.delta === 'object' && f.delta ? f.delta as Record<string, unknown> : undefined,
      mountMode: typeof mount?.facts?.mode === 'string' ? mount.facts.mode : undefined,
      phases: Object.fromEntries(state.phases.map((p) => [p.name, p.seconds])),
    };
    if (process.env.NIP_BENCH_TIMELINE) {
      writeFileSync(join(process.env.NIP_BENCH_TIMELINE, `${mode}-${round}.json`), JSON.stringify({ phases: state.phases, timeline: sampler.timeline, journal: await m.journal('node-image-pivot.service') }));
    }
    if (!sampler.ownTmpfs) throw new Error(`the ${mode} pivot did not stage on a tmpfs of its own (${JSON.stringify(f.staging)}): nothing to measure RAM with`);
    say(`staging round ${round} ${mode} (ran ${row.ran ?? 'unreported'}): pull ${row.pullSeconds.toFixed(2)} s, pivot ${row.pivotSeconds.toFixed(2)} s, `
      + `held ${(row.heldBytes / 2 ** 20).toFixed(1)} MiB, peak ${(row.peakStagingBytes / 2 ** 20).toFixed(1)} MiB, tree ${(row.treeFileBytes / 2 ** 20).toFixed(1)} MiB, `
      + `RSS ${((row.factsPeakRssBytes ?? 0) / 2 ** 20).toFixed(0)}/${((row.polledPeakRssBytes ?? 0) / 2 ** 20).toFixed(0)} MiB (facts/polled), `
      + `RssAnon ${((row.polledPeakAnonBytes ?? 0) / 2 ** 20).toFixed(0)} MiB, agent CPU ${(row.agentCpuSeconds ?? 0).toFixed(2)} s, `
      + `paced GCs ${row.pacedGc?.collections ?? 'n/a'} (${row.pacedGc?.seconds.toFixed(3) ?? 'n/a'} s)`);
    return row;
  } finally {
    sampler?.stop();
    await m.dispose();
  }
}

export interface StagingModesReport extends StagingModesVerdicts {
  image: DeltaImageFacts & { ref: string };
  rows: ModeRow[];
  text: string;
}

/** The case: `rounds` rounds of full then delta, in one registry and one image. Needs root. */
export async function stagingModesBench(opts: { rounds: number; binary: string; cacheRoot: string; say: (s: string) => void; modes?: readonly Mode[] }): Promise<StagingModesReport> {
  if (opts.rounds < 1) throw new Error('--staging-rounds wants at least 1');
  const { tree } = await ensureRootfs();
  const registry = await startRegistry();
  const work = mkdtempSync(join(tmpdir(), 'nip-bench-delta-'));
  try {
    opts.say('staging modes: building (or reusing) the ~90%-identical node image');
    const image = await pushDeltaImage(tree, opts.cacheRoot, join(work, 'layout'), registry.host);
    opts.say(`staging modes: ${image.ref}, /usr ${(image.facts.identicalFraction * 100).toFixed(1)}% identical to the booted one; ${opts.rounds} rounds of full, delta`);
    const rows: ModeRow[] = [];
    for (let round = 1; round <= opts.rounds; round++) {
      for (const mode of opts.modes ?? (['full', 'delta'] as const)) rows.push(await oneRound(mode, round, { ref: image.ref, host: registry.host }, opts.binary, opts.say));
    }
    const verdicts = stagingVerdicts(rows);
    return { ...verdicts, image: { ...image.facts, ref: image.ref }, rows, text: formatStagingModes(verdicts, image.facts) };
  } finally {
    await registry.stop();
    rmSync(work, { recursive: true, force: true });
  }
}
