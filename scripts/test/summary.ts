// Turns vitest's JSON report into the one closing line CI recognises.
import { readFileSync } from 'node:fs';

interface Report { numPassedTests: number; numFailedTests: number; numPendingTests: number; numTodoTests: number; testResults: Array<{ status: string; message?: string; name: string }> }
const file = process.argv[2];
let report: Report;
try {
  report = JSON.parse(readFileSync(file!, 'utf8')) as Report;
} catch {
  console.log('0 passed, 1 failed');
  process.exit(1);
}
// A file that fails to load (syntax error, failing beforeAll) has no failed tests but failed.
const brokenFiles = report.testResults.filter((f) => f.status === 'failed' && f.message).length;
const failed = report.numFailedTests + brokenFiles;
const skipped = report.numPendingTests + report.numTodoTests;
console.log(`${report.numPassedTests} passed, ${failed} failed${skipped ? `, ${skipped} skipped` : ''}`);
process.exit(failed ? 1 : 0);
