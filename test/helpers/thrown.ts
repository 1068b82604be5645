import { PivotError } from '../../src/errors.ts';

/** The PivotError that `fn` throws; anything else (or nothing) fails the test. */
export function thrown(fn: () => unknown): PivotError {
  try {
    fn();
  } catch (err) {
    if (err instanceof PivotError) return err;
    throw err;
  }
  throw new Error('expected a PivotError');
}
