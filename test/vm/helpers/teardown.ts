// vitest setup file of the "vm" project: whatever a test file leaves running is powered off
// (and, if that hangs, killed by PID) when the file ends, so no qemu outlives its test.
import { afterAll } from 'vitest';
import { disposeAllVms, killAllVms } from '../../../scripts/testbed/vm/machine.ts';

afterAll(async () => {
  try {
    await disposeAllVms();
  } finally {
    killAllVms();
  }
});
