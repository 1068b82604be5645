import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  labelTree, parseSelinuxType, planLabel, selinuxEnabled, type TreeView,
} from '../../src/selinux.ts';
import { thrown } from '../helpers/thrown.ts';

let root: string;
function put(rel: string, text = ''): void {
  mkdirSync(join(root, rel, '..'), { recursive: true });
  writeFileSync(join(root, rel), text);
}
beforeEach(() => {
  root = mkdtempSync(join(tmpdir(), 'nip-selinux-'));
});
afterEach(() => {
  rmSync(root, { recursive: true, force: true });
});


const FC = 'contexts/files/file_contexts';

describe('parseSelinuxType', () => {
  it('reads SELINUXTYPE and ignores comments and SELINUX=', () => {
    expect(parseSelinuxType('# SELINUXTYPE=mls\nSELINUX=enforcing\nSELINUXTYPE=targeted\n')).toBe('targeted');
    expect(parseSelinuxType('SELINUXTYPE="mls" # quoted\n')).toBe('mls');
    expect(parseSelinuxType('SELINUX=disabled\n')).toBeUndefined();
  });
});

describe('planLabel', () => {
  it('finds the image\'s own policy in etc/selinux and labels only the staged tree', () => {
    put('etc/selinux/config', 'SELINUX=enforcing\nSELINUXTYPE=targeted\n');
    put(`etc/selinux/targeted/${FC}`, '/usr(/.*)? system_u:object_r:usr_t:s0\n');
    put('etc/selinux/targeted/policy/policy.31');
    put('etc/selinux/targeted/policy/policy.33');
    put('etc/selinux/targeted/policy/policy.33.bak');
    const plan = planLabel({ stagedRoot: `${root}/` });
    expect(plan.policyType).toBe('targeted');
    expect(plan.policyBinary).toBe(join(root, 'etc/selinux/targeted/policy/policy.33'));
    expect(plan.argv).toEqual([
      'setfiles', '-r', root, '-F', '-T', '0',
      '-c', join(root, 'etc/selinux/targeted/policy/policy.33'),
      join(root, `etc/selinux/targeted/${FC}`), root,
    ]);
    // Never the running system's policy or root.
    expect(plan.argv.filter((a) => a === '/' || a.startsWith('/etc/selinux'))).toEqual([]);
  });

  it('falls back to usr/etc/selinux (ostree layout) and leaves out -c without a binary policy', () => {
    put('usr/etc/selinux/config', 'SELINUXTYPE=mls\n');
    put(`usr/etc/selinux/mls/${FC}`, '');
    const plan = planLabel({ stagedRoot: root, threads: 2 });
    expect(plan.policyDir).toBe(join(root, 'usr/etc/selinux/mls'));
    expect(plan.argv).toEqual(['setfiles', '-r', root, '-F', '-T', '2', join(root, `usr/etc/selinux/mls/${FC}`), root]);
  });

  it('uses an explicit policy type even without a config file', () => {
    put(`etc/selinux/custom/${FC}`, '');
    expect(planLabel({ stagedRoot: root, policyType: 'custom' }).fileContexts).toBe(join(root, `etc/selinux/custom/${FC}`));
  });

  it('explains a missing config, a config without SELINUXTYPE, a missing file_contexts and a bad root', () => {
    expect(thrown(() => planLabel({ stagedRoot: root })).message).toMatch(/no etc\/selinux\/config/);
    put('etc/selinux/config', 'SELINUX=enforcing\n');
    expect(thrown(() => planLabel({ stagedRoot: root }))).toMatchObject({ path: join(root, 'etc/selinux/config') });
    put('etc/selinux/config', 'SELINUXTYPE=targeted\n');
    const e = thrown(() => planLabel({ stagedRoot: root }));
    expect(e.path).toBe(join(root, `etc/selinux/targeted/${FC}`));
    expect(e.fix).toMatch(/ship the targeted policy/);
    expect(thrown(() => planLabel({ stagedRoot: '/' })).kind).toBe('usage');
    expect(thrown(() => planLabel({ stagedRoot: 'rel' })).kind).toBe('usage');
  });

  it('is pure over a TreeView', () => {
    const view: TreeView = {
      readText: (p) => (p === '/s/etc/selinux/config' ? 'SELINUXTYPE=targeted' : undefined),
      list: (d) => (d === '/s/etc/selinux/targeted/policy' ? ['policy.9', 'policy.10'] : undefined),
      isFile: (p) => p === `/s/etc/selinux/targeted/${FC}`,
    };
    expect(planLabel({ stagedRoot: '/s' }, view).policyBinary).toBe('/s/etc/selinux/targeted/policy/policy.10');
  });
});

describe('labelTree', () => {
  it('reports this machine as SELinux-off through a fake selinuxfs path', async () => {
    expect(await selinuxEnabled(join(root, 'no-selinuxfs'))).toBe(false);
    put('selinuxfs/enforce', '1');
    expect(await selinuxEnabled(join(root, 'selinuxfs'))).toBe(true);
  });

  it('a missing setfiles is a clear error', async () => {
    put('etc/selinux/config', 'SELINUXTYPE=targeted\n');
    put(`etc/selinux/targeted/${FC}`, '');
    const plan = { ...planLabel({ stagedRoot: root }), argv: ['/nonexistent/setfiles'] as [string] };
    await expect(labelTree(plan)).rejects.toMatchObject({ fix: expect.stringMatching(/policycoreutils/) });
  });

  const haveSetfiles = spawnSync('setfiles', ['-h']).error === undefined && process.getuid?.() === 0;
  it.skipIf(!haveSetfiles)('really labels the staged tree with its own file_contexts (setfiles -r)', async () => {
    put('etc/selinux/config', 'SELINUXTYPE=targeted\n');
    put(`etc/selinux/targeted/${FC}`, '/usr(/.*)?\tsystem_u:object_r:usr_t:s0\n/usr/bin(/.*)?\tsystem_u:object_r:bin_t:s0\n');
    put('usr/bin/kubelet', '#!/bin/sh\n');
    const r = await labelTree(planLabel({ stagedRoot: root }));
    expect(r).toEqual({ seconds: expect.any(Number) });
    const get = (rel: string): string => spawnSync('getfattr', ['--only-values', '-n', 'security.selinux', join(root, rel)], { encoding: 'utf8' }).stdout.replace(/\0$/, '');
    expect(get('usr/bin/kubelet')).toBe('system_u:object_r:bin_t:s0');
    expect(get('usr')).toBe('system_u:object_r:usr_t:s0');
  });

  it('the selinux.label failpoint fires before setfiles runs', async () => {
    put('etc/selinux/config', 'SELINUXTYPE=targeted\n');
    put(`etc/selinux/targeted/${FC}`, '');
    const { resetFailpoints } = await import('../../src/failpoints.ts');
    process.env.NODE_IMAGE_PIVOT_FAILPOINTS = 'selinux.label:error';
    resetFailpoints();
    try {
      await expect(labelTree(planLabel({ stagedRoot: root }))).rejects.toThrow(/failpoint selinux.label/);
    } finally {
      delete process.env.NODE_IMAGE_PIVOT_FAILPOINTS;
      resetFailpoints();
    }
  });
});

describe('labelStagedTree (the pivot phase)', () => {
  it('skips on config off or a host without SELinux, without needing a policy in the image', async () => {
    const { labelStagedTree } = await import('../../src/selinux.ts');
    expect(await labelStagedTree({ stagedRoot: root, setting: 'off' })).toEqual({ skipped: 'selinux off in the config' });
    expect(await labelStagedTree({ stagedRoot: root, setting: 'auto', selinuxfs: join(root, 'none') })).toEqual({ skipped: 'selinux disabled' });
  });
  it('on an SELinux host, an image without a policy stops the phase with the path', async () => {
    const { labelStagedTree } = await import('../../src/selinux.ts');
    put('selinuxfs/enforce', '1');
    await expect(labelStagedTree({ stagedRoot: root, setting: 'auto', selinuxfs: join(root, 'selinuxfs') }))
      .rejects.toMatchObject({ path: join(root, 'etc/selinux'), kind: 'verification', exitCode: 4 });
  });
});
