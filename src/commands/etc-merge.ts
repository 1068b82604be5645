import type { Command } from './types.ts';
import { requireOpt } from './shared.ts';

export const etcMergeCommand: Command = {
  name: 'etc-merge',
  summary: '3-way merge of /etc (ostree semantics): old defaults, live /etc, new defaults',
  usage: 'etc-merge --base DIR --current DIR --new DIR [--journal DIR] [--dry-run] [--json]',
  help: [
    'Local changes win. A conflict changes nothing and exits 7 with the path.',
    'Before planning, an apply interrupted by a crash is rolled back from its journal.',
    'See docs/etc-merge.md for the exact semantics and the differences from ostree.',
  ].join('\n'),
  options: {
    base: { type: 'string' },
    current: { type: 'string' },
    new: { type: 'string' },
    journal: { type: 'string' },
    'dry-run': { type: 'boolean' },
    json: { type: 'boolean' },
  },
  optionHelp: {
    base: "the booted image's defaults (/usr/etc)",
    current: 'the live /etc, changed in place',
    new: "the new image's defaults (its usr/etc, or etc)",
    journal: 'undo journal directory, same filesystem as current (default: beside current)',
    'dry-run': 'print the plan and change nothing',
    json: 'print the plan or the result as JSON',
  },
  positionals: { names: [], min: 0, max: 0 },
  async run({ values }) {
    // Loaded on use: a command pays start-up time and memory only for the modules it needs.
    const { applyEtcMerge, formatNotes, formatPlan, pendingEtcJournals, planEtcMerge, planToJSON, recoverEtcJournal, summarizePlan } = await import('../etc/index.ts');
    const base = requireOpt(values, 'base', 'etc-merge');
    const current = requireOpt(values, 'current', 'etc-merge');
    const next = requireOpt(values, 'new', 'etc-merge');
    const journalDir = typeof values.journal === 'string' ? values.journal : undefined;
    const dryRun = values['dry-run'] === true;
    const json = values.json === true;
    // A dry run must not change anything, not even an interrupted apply's leftovers; it plans
    // against /etc as it is and says so if a journal is pending.
    const pending = dryRun ? pendingEtcJournals(current, journalDir) : [];
    const recovered = dryRun ? 'none' : await recoverEtcJournal(current, journalDir);
    const plan = await planEtcMerge({ base, current, new: next });
    if (dryRun) {
      const note = pending.length
        ? `note: an interrupted merge left a journal at ${pending.join(', ')}; a real run rolls it back first, so its plan may differ\n`
        : '';
      process.stdout.write(json
        ? `${JSON.stringify({ dryRun: true, pendingJournals: pending, plan: planToJSON(plan) }, null, 2)}\n`
        : `${note}${formatPlan(plan)}\n`);
      return 0;
    }
    const result = await applyEtcMerge(plan, journalDir ? { journalDir } : {});
    if (json) {
      process.stdout.write(`${JSON.stringify({ dryRun: false, recovered, plan: planToJSON(plan), result }, null, 2)}\n`);
    } else {
      const s = summarizePlan(plan);
      const parts = Object.entries(result.counts).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k}`);
      process.stdout.write(`${recovered === 'rolled-back' ? 'rolled back an interrupted merge first; ' : ''}`
        + `applied ${result.applied} action${result.applied === 1 ? '' : 's'}${parts.length ? ` (${parts.join(', ')})` : ''}`
        + ` in ${result.seconds.toFixed(3)} s; ${s.warnings.length} warning(s), ${s.ignored.length} ignored\n`);
      const notes = formatNotes(s);
      if (notes.length > 0) process.stdout.write(`${notes.join('\n')}\n`);
    }
    return 0;
  },
};
