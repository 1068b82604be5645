// Human and JSON views of a plan. Paths may hold spaces, newlines or any UTF-8: anything that is
// not plainly printable is shown JSON-quoted so that one path is always one line.
import { ACTION_NAMES, type ActionName, type EtcAction, type EtcPlan, type EtcWarning, type IgnoredEntry } from './types.ts';

export interface EtcPlanSummary {
  counts: Record<ActionName, number>;
  total: number;
  warnings: EtcWarning[];
  ignored: IgnoredEntry[];
  conflicts: string[];
  scanned: EtcPlan['scanned'];
}

export function summarizePlan(plan: EtcPlan): EtcPlanSummary {
  const counts = Object.fromEntries(ACTION_NAMES.map((n) => [n, 0])) as Record<ActionName, number>;
  for (const a of plan.actions) counts[a.action]++;
  return {
    counts,
    total: plan.actions.length,
    warnings: plan.warnings,
    ignored: plan.ignored,
    conflicts: plan.conflicts.map((c) => c.path),
    scanned: plan.scanned,
  };
}

export function showPath(rel: string): string {
  // Printable ASCII and UTF-8 letters pass; quotes, backslashes, controls and leading or
  // trailing blanks would make the line ambiguous.
  return /^[^\s"\\\p{C}](?:[^"\\\p{C}]*[^\s"\\\p{C}])?$/u.test(rel) && !/[\n\r\t]/.test(rel) ? rel : JSON.stringify(rel);
}

const octal = (mode: number): string => mode.toString(8).padStart(4, '0');

function detail(a: EtcAction): string {
  switch (a.action) {
    case 'add':
      return `file ${octal(a.entry.mode)} ${a.entry.uid}:${a.entry.gid}, ${a.entry.size} bytes`;
    case 'replace':
      return `${a.was.type} -> file ${octal(a.entry.mode)} ${a.entry.uid}:${a.entry.gid}, ${a.entry.size} bytes`;
    case 'symlink':
      return `${a.was ? `${a.was.type} -> ` : ''}symlink to ${JSON.stringify(a.entry.target)}`;
    case 'mkdir':
      return `${a.was ? `${a.was.type} -> ` : ''}directory ${octal(a.entry.mode)} ${a.entry.uid}:${a.entry.gid}`;
    case 'remove':
      return a.was.type === 'dir' ? `directory and ${a.below} entries below it` : a.was.type;
    case 'chmod':
      return `${octal(a.was.mode)} -> ${octal(a.mode)}`;
    case 'chown':
      return `${a.was.uid}:${a.was.gid} -> ${a.uid}:${a.gid}`;
  }
}

export function formatPlan(plan: EtcPlan): string {
  const s = summarizePlan(plan);
  const lines: string[] = [];
  const nonZero = ACTION_NAMES.filter((n) => s.counts[n] > 0).map((n) => `${s.counts[n]} ${n}`);
  lines.push(`/etc merge plan for ${plan.roots.current}: ${s.total} action${s.total === 1 ? '' : 's'}${nonZero.length ? ` (${nonZero.join(', ')})` : ''}, ${s.warnings.length} warning${s.warnings.length === 1 ? '' : 's'}, ${s.ignored.length} ignored`);
  lines.push(`  scanned: base ${s.scanned.base}, current ${s.scanned.current}, new ${s.scanned.new} entries`);
  if (plan.conflicts.length > 0) {
    lines.push('', `conflicts (${plan.conflicts.length}): the merge will refuse and change nothing`);
    for (const c of plan.conflicts) lines.push(`  ${showPath(c.path)}: ${c.message}`);
  }
  for (const name of ACTION_NAMES) {
    const group = plan.actions.filter((a) => a.action === name);
    if (group.length === 0) continue;
    lines.push('', `${name} (${group.length}):`);
    for (const a of group) lines.push(`  ${showPath(a.path)}  [${detail(a)}]`);
  }
  const notes = formatNotes(s);
  if (notes.length > 0) lines.push('', ...notes);
  return lines.join('\n');
}

/**
 * The warnings and ignored sections (the end of formatPlan, also printed after an apply), one
 * line each, the sections separated by an empty line; no lines when there is nothing to say.
 */
export function formatNotes(s: Pick<EtcPlanSummary, 'warnings' | 'ignored'>): string[] {
  const lines: string[] = [];
  if (s.warnings.length > 0) {
    lines.push(`warnings (${s.warnings.length}): local wins`);
    for (const w of s.warnings) lines.push(`  ${showPath(w.path)}: ${w.message}`);
  }
  if (s.ignored.length > 0) {
    if (lines.length > 0) lines.push('');
    lines.push(`ignored (${s.ignored.length}): FIFOs, sockets and devices take no part in the merge`);
    for (const g of s.ignored) lines.push(`  ${showPath(g.path)}: ${g.note}`);
  }
  return lines;
}

/** The --json view: the summary plus every action with the facts an operator needs. */
export function planToJSON(plan: EtcPlan): Record<string, unknown> {
  return {
    roots: plan.roots,
    ...summarizePlan(plan),
    conflicts: plan.conflicts,
    actions: plan.actions.map((a) => {
      const out: Record<string, unknown> = { action: a.action, path: a.path };
      if ('entry' in a) {
        out.type = a.entry.type;
        out.mode = octal(a.entry.mode);
        out.uid = a.entry.uid;
        out.gid = a.entry.gid;
        if (a.entry.type === 'symlink') out.target = a.entry.target;
      }
      if ('was' in a && a.was) out.was = a.was.type;
      if (a.action === 'remove' && a.below) out.below = a.below;
      if (a.action === 'chmod') Object.assign(out, { from: octal(a.was.mode), mode: octal(a.mode) });
      if (a.action === 'chown') Object.assign(out, { from: `${a.was.uid}:${a.was.gid}`, uid: a.uid, gid: a.gid });
      return out;
    }),
  };
}
