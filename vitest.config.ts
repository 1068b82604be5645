import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

// Four projects: "unit" runs everywhere in temp dirs and namespaces; "e2e" boots the nspawn
// machine, "e2e-delta" runs its pivot scenarios again with delta staging, and "vm" boots qemu VMs
// (scripts/testbed/vm); all but unit need root plus the Debian packages from
// scripts/testbed/install-deps.sh.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          // One project per group, run in this order: unit, e2e, e2e-delta, vm. (With unit and e2e
          // sharing group 0, vitest 4.1 ran e2e after every other group.)
          sequence: { groupOrder: 0 },
          include: ['test/**/*.test.ts'],
          exclude: ['test/e2e/**', 'test/vm/**'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
          pool: 'forks',
          // A failing `run` in a unit test must not put its message on this host's console.
          env: { NODE_IMAGE_PIVOT_ISSUE_DIR: join(tmpdir(), 'nip-unit-tests-issue.d') },
        },
      },
      {
        test: {
          name: 'e2e',
          sequence: { groupOrder: 1 },
          include: ['test/e2e/**/*.test.ts'],
          testTimeout: 600_000,
          hookTimeout: 600_000,
          pool: 'forks',
          fileParallelism: false,
        },
      },
      {
        test: {
          // The e2e pivot scenarios again, staging as a delta over the booted /usr (issue 14:
          // every scenario passes in both modes; nspawn's root is not in RAM, so auto is full).
          name: 'e2e-delta',
          include: ['test/e2e/pivot.test.ts', 'test/e2e/faults-pivot.test.ts', 'test/e2e/pivot-ostree.test.ts', 'test/e2e/installer.test.ts'],
          env: { NODE_IMAGE_PIVOT_E2E_STAGING: 'delta' },
          sequence: { groupOrder: 2 },
          testTimeout: 600_000,
          hookTimeout: 600_000,
          pool: 'forks',
          fileParallelism: false,
        },
      },
      {
        test: {
          name: 'vm',
          include: ['test/vm/**/*.test.ts'],
          // TCG on a shared 2-core host: one VM at a time, after the other projects (groupOrder),
          // and deadlines in minutes.
          sequence: { groupOrder: 3 },
          testTimeout: 1_800_000,
          hookTimeout: 1_800_000,
          pool: 'forks',
          fileParallelism: false,
          setupFiles: ['test/vm/helpers/teardown.ts'],
        },
      },
    ],
  },
});
