// The seam under src/pivot.ts: the steps the pivot drives, typed end to end. src/host-steps.ts is
// the implementation that acts on this host; tests drive runPivot with recording fakes. What one
// step learns that a later one needs travels in these values, never in state kept by the steps.
import type { StagingRoom } from './staging-fs.ts';
import type { Config } from './config.ts';
import type { EtcPlan } from './etc/index.ts';
import type { Progress } from './progress.ts';
import type { StagingChoice, StagingMode } from './staging-mode.ts';

/** What `resolve` learns about the node image without downloading its layers. */
export interface ResolvedImage {
  /** As configured, or as the release image names it. */
  reference: string;
  releaseImage?: string;
  /** registry/repository@digest: everything after resolve pulls by it, so a moving tag cannot mix images. */
  pinned: string;
  manifestDigest: string;
  compressedBytes: number;
  layerCount: number;
}

export interface StagedTree {
  /** Root of the unpacked image; its usr/ becomes /usr (delta: the top of an overlay over the booted /usr). */
  root: string;
  mode: StagingMode;
  reused: boolean;
  /** For the state file only. */
  facts: Record<string, unknown>;
}

/** What the dry run prints and the log says of an /etc plan (src/etc's own summary has more). */
export interface EtcPlanReport {
  actions: number;
  counts: Record<string, number>;
  warnings: string[];
  conflicts: string[];
  text: string;
}

export interface PlannedEtc {
  plan: EtcPlan;
  report: EtcPlanReport;
}

export interface LabelledTree {
  /** Why nothing was labelled (SELinux off in the config or on the host). */
  skipped?: string;
  /** The node image's file_contexts, loaded by then: etc-apply labels what it writes with it. */
  fileContexts?: string;
  /** Puts the booted policy back; set when the step loaded the node image's. */
  undo?: () => Promise<void>;
  facts?: Record<string, unknown>;
}

export interface MountedUsr {
  undo(): Promise<void>;
  facts: Record<string, unknown>;
}

/** systemd's ActiveState of the isolate target and of the pivot's own target. */
export interface TargetStates {
  target: string;
  pivotTarget: string;
}

/** The steps the pivot drives, in phase order. Each does its one thing; the decisions are runPivot's. */
export interface PivotSteps {
  /** Whether a crashed run left an /etc journal, without touching it (dry run). */
  pendingEtcJournal(): 'none' | 'pending';
  recoverEtc(): Promise<'none' | 'rolled-back'>;
  /** Detaches the mounts a crashed run left at the agent's own mount points; returns them. */
  recoverMounts(cfg: Config): Promise<string[]>;
  resolve(cfg: Config): Promise<ResolvedImage>;
  /** Where the staged tree for a digest lives once a run finished unpacking it. */
  stagedPath(cfg: Config, digest: string): string;
  /** Makes stagingDir ready (its own tmpfs when it would sit in RAM) and says how much room it has for `stagedRoot`, counting what the pull removes first. */
  stagingRoom(cfg: Config, stagedRoot: string): Promise<StagingRoom>;
  /** Full or delta staging for this run, and why (src/staging-mode.ts); after stagingRoom, whose filesystem the probe uses. */
  stagingMode(cfg: Config): Promise<StagingChoice>;
  /** Stages as `choice` says; without one, reuses the tree a previous run finished, in the mode it was staged in. */
  pull(cfg: Config, image: ResolvedImage, progress: Progress, choice?: StagingChoice): Promise<StagedTree>;
  planEtc(cfg: Config, staged: StagedTree): Promise<PlannedEtc>;
  /** Loads the node image's policy if it differs, then labels the staged tree. */
  label(cfg: Config, staged: StagedTree): Promise<LabelledTree>;
  /** Does /usr already show the staged tree rooted at `stagedRoot`? */
  usrIsPivotedTo(cfg: Config, stagedRoot: string): Promise<boolean>;
  /** The visible switch is one mount; `undo` shows the booted /usr again. */
  mountUsr(cfg: Config, staged: StagedTree): Promise<MountedUsr>;
  applyEtc(plan: EtcPlan, fileContexts: string | undefined): Promise<Record<string, unknown>>;
  refresh(cfg: Config): Promise<Record<string, unknown>>;
  targetStates(cfg: Config): Promise<TargetStates>;
  isolate(cfg: Config): Promise<Record<string, unknown>>;
  /** One more daemon-reload, so the generator sees the state file say done or skipped. */
  settle(): Promise<void>;
}
