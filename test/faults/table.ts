// The fault table: every fault case records one row (category, case, expected, observed, pass)
// so that `npm run test:faults` can print them as one table and write it to docs/reliability.md.
// Rows go to the JSONL file named by NIP_FAULT_TABLE; without it, recording is a no-op and the
// cases are plain vitest tests.
import { appendFileSync } from 'node:fs';
import { it } from 'vitest';

export const TABLE_ENV = 'NIP_FAULT_TABLE';

export interface FaultRow {
  category: string;
  case: string;
  expected: string;
  observed: string;
  pass: boolean;
  ms: number;
}

export function recordRow(row: FaultRow): void {
  const file = process.env[TABLE_ENV];
  if (file) appendFileSync(file, `${JSON.stringify(row)}\n`);
}

const oneLine = (s: string): string => s.replace(/\s+/g, ' ').trim().slice(0, 240);

/**
 * A vitest case that is also a table row. `fn` asserts and returns what it observed, in a few
 * words; a thrown assertion becomes the row's observation with pass = false.
 */
export function faultCase(category: string, name: string, expected: string, fn: () => Promise<string> | string, timeout?: number): void {
  it(name, async () => {
    const t0 = Date.now();
    try {
      const observed = await fn();
      recordRow({ category, case: name, expected, observed: oneLine(observed), pass: true, ms: Date.now() - t0 });
    } catch (err) {
      recordRow({ category, case: name, expected, observed: oneLine(`FAILED: ${(err as Error).message}`), pass: false, ms: Date.now() - t0 });
      throw err;
    }
  }, timeout);
}
