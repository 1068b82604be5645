// The /etc merge: what the pivot (src/host-steps.ts) and the etc-merge command call.
//
// Public API (keep stable; documented in docs/etc-merge.md):
//   recoverEtcJournal(current, journalDir?) -> 'none' | 'rolled-back'
//       Call first on every run. Rolls back an apply that a crash interrupted (or finishes
//       deleting a committed journal). Looks in journalDir if given, else in both default places.
//   planEtcMerge({ base, current, new }) -> EtcPlan
//       Scans the three trees (lstat only) and plans. Throws PivotError 'etc-conflict' (exit 7)
//       naming every conflicting path; nothing is changed then.
//   summarizePlan(plan), formatPlan(plan), formatNotes(summary), planToJSON(plan)
//       Counts by action, warnings and ignored entries; the human text (and its warnings and
//       ignored sections alone); the --json view.
//   applyEtcMerge(plan, { journalDir?, durable? }) -> EtcApplyResult
//       Applies in place, transactionally; on any error rolls back and throws 'etc-merge'.
// Default journal: <dirname(current)>/.node-image-pivot-etc-journal (same filesystem as /etc
// on a classic root); when that parent is read-only or another mount (composefs roots), the
// journal goes to <current>/.node-image-pivot-etc-journal, which scans skip.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { failpoint } from '../failpoints.ts';
import { conflictError } from './conflict.ts';
import { JOURNAL_NAME, journalDirs, rollbackDir } from './journal.ts';
import { planMerge } from './plan.ts';
import { hashPaths, scanTree } from './scan.ts';
import type { EtcPlan, EtcTrees } from './types.ts';

export { applyEtcMerge, type EtcApplyOptions, type EtcApplyResult } from './apply.ts';
export { summarizePlan, formatPlan, formatNotes, planToJSON, type EtcPlanSummary } from './format.ts';
export { JOURNAL_NAME, besideJournalDir, insideJournalDir } from './journal.ts';
export type * from './types.ts';

export interface EtcMergeInputs {
  base: string;
  current: string;
  new: string;
}

/** Plans from trees already scanned (hashes filled in as needed). No conflict check. */
export function planFromTrees(trees: EtcTrees): EtcPlan {
  failpoint('etc.plan');
  for (let round = 0; ; round++) {
    const outcome = planMerge(trees);
    if (outcome.complete) {
      return {
        roots: { base: trees.base.root, current: trees.current.root, new: trees.new.root },
        ...outcome.plan,
        scanned: { base: trees.base.entries.size, current: trees.current.entries.size, new: trees.new.entries.size },
        current: trees.current.entries,
      };
    }
    // Each round hashes at least one more file, so this ends; three rounds is the usual.
    for (const name of ['base', 'current', 'new'] as const) {
      hashPaths(trees[name], outcome.missing.filter((m) => m.tree === name).map((m) => m.path));
    }
    if (round > 10) throw new Error('etc plan: hashing did not converge (bug)');
  }
}

export async function planEtcMerge(inputs: EtcMergeInputs): Promise<EtcPlan> {
  const trees: EtcTrees = {
    base: scanTree(resolve(inputs.base)),
    current: scanTree(resolve(inputs.current), { excludeTop: [JOURNAL_NAME] }),
    new: scanTree(resolve(inputs.new)),
  };
  const plan = planFromTrees(trees);
  if (plan.conflicts.length > 0) throw conflictError(plan.conflicts);
  return plan;
}

/** The journal directories that exist for `current` (a dry run reports them, never touches them). */
export function pendingEtcJournals(current: string, journalDir?: string): string[] {
  return journalDirs(current, journalDir).filter((dir) => existsSync(dir));
}

export async function recoverEtcJournal(current: string, journalDir?: string): Promise<'none' | 'rolled-back'> {
  let result: 'none' | 'rolled-back' = 'none';
  for (const dir of journalDirs(current, journalDir)) {
    if (!existsSync(dir)) continue;
    if (rollbackDir(dir, resolve(current)) === 'rolled-back') result = 'rolled-back';
  }
  return result;
}
