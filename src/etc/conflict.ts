import { PivotError } from '../errors.ts';
import type { EtcConflict } from './types.ts';

/** One error for all conflicts, so the operator fixes them in one go. */
export function conflictError(conflicts: readonly EtcConflict[]): PivotError {
  const first = conflicts[0] as EtcConflict;
  const more = conflicts.length > 1 ? ` (and ${conflicts.length - 1} more: ${conflicts.slice(1, 6).map((c) => JSON.stringify(c.path)).join(', ')}${conflicts.length > 6 ? ', …' : ''})` : '';
  return new PivotError('etc-conflict', `${first.message}${more}; nothing was changed`, {
    path: first.path,
    fix: 'move the local file aside (or delete it) so the new default directory can be installed, then rerun',
    facts: { conflicts: conflicts.map((c) => c.path) },
  });
}
