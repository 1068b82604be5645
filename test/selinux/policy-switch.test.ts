// The policy switch of phase selinux: which binary policy, whether to load it, the kernel
// interface (a stand-in selinuxfs directory here; the VM suite uses the real one), the helper
// runner that keeps setfiles' errors, and the labels of what the /etc merge writes.
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseAccessAnswer, permBit, pickPolicyVersion, loadPolicyImage } from '../../src/selinux-kernel.ts';
import {
  decidePolicySwitch, etcLabelQuestions, etcLabels, labelStagedTree, lookupContexts, planLabel, policyFilesToPrelabel,
} from '../../src/selinux.ts';
import { runThroughPipe } from '../../src/child-output.ts';
import { resetFailpoints } from '../../src/failpoints.ts';

let root: string;
function put(rel: string, text: string | Buffer = ''): string {
  const p = join(root, rel);
  mkdirSync(join(p, '..'), { recursive: true });
  writeFileSync(p, text);
  return p;
}
beforeEach(() => { root = mkdtempSync(join(tmpdir(), 'nip-policy-')); });
afterEach(() => { rmSync(root, { recursive: true, force: true }); });

const FC = 'contexts/files/file_contexts';
const haveTools = process.getuid?.() === 0 && spawnSync('setfiles', ['-h']).error === undefined && spawnSync('matchpathcon', ['-h']).error === undefined;

describe('pure decisions', () => {
  it('picks the newest policy.NN the kernel supports, as libselinux does', () => {
    expect(pickPolicyVersion(['policy.31', 'policy.33', 'policy.34', 'policy.33.bak', 'x'], 33)).toBe('policy.33');
    expect(pickPolicyVersion(['policy.31', 'policy.34'], undefined)).toBe('policy.34');
    expect(pickPolicyVersion(['policy.34'], 33)).toBeUndefined();
  });

  it('loads only a policy that differs from the booted one', () => {
    expect(decidePolicySwitch({ binary: '/s/p.33', digest: 'a' }, { binary: '/etc/p.33', digest: 'a' }).load).toBe(false);
    expect(decidePolicySwitch({ binary: '/s/p.33', digest: 'a' }, { binary: '/etc/p.33', digest: 'b' })).toMatchObject({ load: true, reason: expect.stringContaining('/s/p.33') });
    expect(decidePolicySwitch({ binary: '/s/p.33', digest: 'a' }, {}).load).toBe(true);
  });

  it('reads the access answer of selinuxfs and the bit of a permission', () => {
    expect(parseAccessAnswer('ffffffff ffffffff 0 ffffffff 12 0')).toEqual({ allowed: 0xffffffff, permissive: false });
    expect(parseAccessAnswer('5 ffffffff 0 ffffffff 12 1')).toEqual({ allowed: 5, permissive: true });
    expect(() => parseAccessAnswer('garbage')).toThrow();
    expect(permBit(1)).toBe(1);
    expect(permBit(32)).toBe(0x80000000);
  });

  it('prelabels exactly the policy files setfiles reads, named as under /etc/selinux', () => {
    put('usr/etc/selinux/config', 'SELINUXTYPE=default\n');
    put(`usr/etc/selinux/default/${FC}`);
    const plan = planLabel({ stagedRoot: root });
    expect(policyFilesToPrelabel(plan, { contexts: ['file_contexts', 'file_contexts.bin'], policy: ['policy.33'] })).toEqual([
      { staged: join(root, 'usr/etc/selinux/default/contexts/files/file_contexts'), path: '/etc/selinux/default/contexts/files/file_contexts' },
      { staged: join(root, 'usr/etc/selinux/default/contexts/files/file_contexts.bin'), path: '/etc/selinux/default/contexts/files/file_contexts.bin' },
      { staged: join(root, 'usr/etc/selinux/default/policy/policy.33'), path: '/etc/selinux/default/policy/policy.33' },
    ]);
  });

  it('asks for the /etc path and type of every entry the merge creates, nothing else', () => {
    const e = (type: string) => ({ type });
    expect(etcLabelQuestions([
      { action: 'add', path: 'kubernetes/kubelet.conf', entry: e('file') },
      { action: 'mkdir', path: 'kubernetes', entry: e('dir') },
      { action: 'symlink', path: 'localtime', entry: e('symlink') },
      { action: 'replace', path: 'issue', entry: e('file') },
      { action: 'remove', path: 'issue.net' },
      { action: 'chmod', path: 'shadow' },
    ])).toEqual([
      { rel: 'kubernetes/kubelet.conf', path: '/etc/kubernetes/kubelet.conf', kind: 'file' },
      { rel: 'kubernetes', path: '/etc/kubernetes', kind: 'dir' },
      { rel: 'localtime', path: '/etc/localtime', kind: 'lnk' },
      { rel: 'issue', path: '/etc/issue', kind: 'file' },
    ]);
  });
});

describe('runThroughPipe', () => {
  it('passes the exit status through and keeps the last lines of stdout and stderr', async () => {
    const r = await runThroughPipe(['sh', '-c', 'for i in 1 2 3 4 5; do echo out$i; done; echo err >&2; exit 3'], 3);
    expect(r).toEqual({ exitCode: 3, output: 'out4\nout5\nerr' });
    expect((await runThroughPipe(['true'])).exitCode).toBe(0);
    expect((await runThroughPipe(['/nonexistent/setfiles'])).exitCode).toBe(127);
  });

  it('gives the helper a pipe, not the agent\'s sockets, and no other descriptors', async () => {
    const r = await runThroughPipe(['sh', '-c', 'ls -l /proc/self/fd/ | tail -n +2 | sed "s/.* \\([0-9]*\\) -> /\\1 /"']);
    const fds = Object.fromEntries(r.output.split('\n').filter((l) => /^\d+ /.test(l)).map((l) => l.split(' ') as [string, string]));
    expect(Object.keys(fds).filter((fd) => Number(fd) <= 2).sort()).toEqual(['0', '1', '2']);
    expect(fds['0']).toBe('/dev/null');
    expect(fds['1']).toMatch(/^pipe:/);
    expect(fds['2']).toMatch(/^pipe:/);
    // 3 is the directory ls reads /proc/self/fd through; the shell's own 3 and 4 do not leak in
    // (fds from 10 up are the test runner's, inherited by this process; systemd passes none).
    expect(Object.keys(fds).filter((fd) => Number(fd) > 3 && Number(fd) < 10)).toEqual([]);
  });
});

describe('loadPolicyImage', () => {
  it('writes the whole image in one write to selinuxfs/load', () => {
    const fs = join(root, 'selinuxfs');
    put('selinuxfs/load');
    loadPolicyImage(Buffer.from('policy bytes'), '/s/policy.33', fs);
    expect(readFileSync(join(fs, 'load'), 'utf8')).toBe('policy bytes');
  });
  it('a refused load is a verification error that names the file', () => {
    expect(() => loadPolicyImage(Buffer.from('x'), '/s/policy.33', join(root, 'missing'))).toThrow(expect.objectContaining({ kind: 'verification', exitCode: 4 }));
  });
});

/** A staged node image with a policy, and a booted /etc/selinux beside it, plus a stand-in selinuxfs. */
function stage(opts: { stagedPolicy: string; bootedPolicy: string; fc: string }): { staged: string; etcSelinux: string; selinuxfs: string } {
  put('staged/usr/etc/selinux/config', 'SELINUX=enforcing\nSELINUXTYPE=default\n');
  put(`staged/usr/etc/selinux/default/${FC}`, opts.fc);
  put('staged/usr/etc/selinux/default/policy/policy.33', opts.stagedPolicy);
  put('staged/usr/bin/kubelet', '#!/bin/sh\n');
  put('etc/selinux/config', 'SELINUXTYPE=default\n');
  put('etc/selinux/default/policy/policy.33', opts.bootedPolicy);
  put('selinuxfs/enforce', '1');
  put('selinuxfs/policyvers', '33\n');
  put('selinuxfs/load');
  return { staged: join(root, 'staged'), etcSelinux: join(root, 'etc/selinux'), selinuxfs: join(root, 'selinuxfs') };
}

describe.skipIf(!haveTools)('labelStagedTree: load, label, put back', () => {
  it('loads the node image\'s policy first, and puts the booted one back when labelling then fails', async () => {
    // A policy.33 that is not a policy: the stand-in kernel takes it, setfiles -c does not.
    const s = stage({ stagedPolicy: 'NEW POLICY', bootedPolicy: 'BOOTED POLICY', fc: '/usr(/.*)?\tsystem_u:object_r:usr_t:s0\n' });
    const err = await labelStagedTree({ stagedRoot: s.staged, setting: 'auto', selinuxfs: s.selinuxfs, etcSelinux: s.etcSelinux }).catch((e: unknown) => e);
    expect(err).toMatchObject({ kind: 'selinux', message: expect.stringMatching(/^setfiles failed labelling the staged tree: .+/) });
    // The error is setfiles' own line, not "exit 255": its stderr reached us.
    expect((err as Error).message).not.toMatch(/exit \d+$/);
    expect(readFileSync(join(s.selinuxfs, 'load'), 'utf8')).toBe('BOOTED POLICY');
  });

  it('does not load a policy identical to the booted one', async () => {
    const s = stage({ stagedPolicy: 'SAME', bootedPolicy: 'SAME', fc: '/usr(/.*)?\tsystem_u:object_r:usr_t:s0\n' });
    await labelStagedTree({ stagedRoot: s.staged, setting: 'auto', selinuxfs: s.selinuxfs, etcSelinux: s.etcSelinux }).catch(() => undefined);
    expect(readFileSync(join(s.selinuxfs, 'load'), 'utf8')).toBe('');
  });

  it('the selinux.load failpoint stops the phase before the kernel sees anything', async () => {
    const s = stage({ stagedPolicy: 'NEW', bootedPolicy: 'OLD', fc: '' });
    process.env.NODE_IMAGE_PIVOT_FAILPOINTS = 'selinux.load:error';
    resetFailpoints();
    try {
      await expect(labelStagedTree({ stagedRoot: s.staged, setting: 'auto', selinuxfs: s.selinuxfs, etcSelinux: s.etcSelinux })).rejects.toThrow(/failpoint selinux.load/);
    } finally {
      delete process.env.NODE_IMAGE_PIVOT_FAILPOINTS;
      resetFailpoints();
    }
    expect(readFileSync(join(s.selinuxfs, 'load'), 'utf8')).toBe('');
  });

  it('an image whose only policy is newer than the kernel supports is refused before any load', async () => {
    const s = stage({ stagedPolicy: 'NEW', bootedPolicy: 'OLD', fc: '' });
    rmSync(join(s.staged, 'usr/etc/selinux/default/policy/policy.33'));
    put('staged/usr/etc/selinux/default/policy/policy.34', 'NEWER');
    await expect(labelStagedTree({ stagedRoot: s.staged, setting: 'auto', selinuxfs: s.selinuxfs, etcSelinux: s.etcSelinux }))
      .rejects.toMatchObject({ kind: 'verification', path: join(s.staged, 'usr/etc/selinux/default/policy'), message: expect.stringMatching(/NN <= 33/) });
    expect(readFileSync(join(s.selinuxfs, 'load'), 'utf8')).toBe('');
  });
});

describe.skipIf(!haveTools)('labels from the node image\'s file_contexts', () => {
  const fc = [
    '/etc(/.*)?\tsystem_u:object_r:etc_t:s0',
    '/etc/kubernetes(/.*)?\tsystem_u:object_r:nipkubelet_conf_t:s0',
    '/etc/selinux(/.*)?\tsystem_u:object_r:selinux_config_t:s0',
    '/etc/selinux/([^/]*/)?contexts/files(/.*)?\tsystem_u:object_r:file_context_t:s0',
    '/etc/selinux/([^/]*/)?policy(/.*)?\tsystem_u:object_r:policy_config_t:s0',
    '/etc/localtime\t-l\tsystem_u:object_r:locale_t:s0',
    '',
  ].join('\n');

  it('lookupContexts asks matchpathcon per entry type', async () => {
    const file = put('fc', fc);
    const got = await lookupContexts(file, [
      { path: '/etc/kubernetes/kubelet.conf', kind: 'file' },
      { path: '/etc/kubernetes', kind: 'dir' },
      { path: '/etc/localtime', kind: 'lnk' },
      { path: '/etc/issue', kind: 'file' },
    ]);
    expect(Object.fromEntries(got)).toEqual({
      '/etc/kubernetes/kubelet.conf': 'system_u:object_r:nipkubelet_conf_t:s0',
      '/etc/kubernetes': 'system_u:object_r:nipkubelet_conf_t:s0',
      '/etc/localtime': 'system_u:object_r:locale_t:s0',
      '/etc/issue': 'system_u:object_r:etc_t:s0',
    });
  });

  it('etcLabels keys the labels by the merge\'s relative paths', async () => {
    const file = put('fc', fc);
    const got = await etcLabels(file, [{ action: 'add', path: 'kubernetes/kubelet.conf', entry: { type: 'file' } }, { action: 'remove', path: 'x' }]);
    expect(Object.fromEntries(got)).toEqual({ 'kubernetes/kubelet.conf': 'system_u:object_r:nipkubelet_conf_t:s0' });
  });

  it('a broken file_contexts is an error naming it', async () => {
    const file = put('fc', '/etc(/.*)?\tfifo\tsystem_u:object_r:etc_t:s0 extra\n');
    await expect(lookupContexts(file, [{ path: '/etc/x', kind: 'file' }])).rejects.toMatchObject({ path: file, fix: expect.stringMatching(/file_contexts/) });
  });
});

describe.skipIf(process.getuid?.() !== 0)('the /etc merge with labels', () => {
  it('gives written entries the given context instead of new\'s, and leaves the other xattrs alone', async () => {
    const { applyEtcMerge, planEtcMerge } = await import('../../src/etc/index.ts');
    const { xattrs } = await import('../../src/xattr.ts');
    process.env.NODE_IMAGE_PIVOT_LOG_LEVEL ??= 'warn';
    for (const t of ['base', 'etc', 'new']) mkdirSync(join(root, t), { recursive: true });
    const src = put('new/kubernetes/kubelet.conf', 'x\n');
    put('new/issue', 'new issue\n');
    // As setfiles labelled them in the staged tree: for their place at /usr/etc.
    xattrs().setAttributeSync(src, 'security.selinux', 'system_u:object_r:etc_t:s0\0');
    xattrs().setAttributeSync(src, 'user.keep', 'me');
    const plan = await planEtcMerge({ base: join(root, 'base'), current: join(root, 'etc'), new: join(root, 'new') });
    const labels = new Map([['kubernetes', 'system_u:object_r:nipkubelet_conf_t:s0'], ['kubernetes/kubelet.conf', 'system_u:object_r:nipkubelet_conf_t:s0']]);
    await applyEtcMerge(plan, { labels, durable: false });
    const get = (rel: string, name = 'security.selinux'): string | undefined => xattrs().getAttributeSync(join(root, 'etc', rel), name)?.toString('utf8').replace(/\0$/, '');
    expect(get('kubernetes/kubelet.conf')).toBe('system_u:object_r:nipkubelet_conf_t:s0');
    expect(get('kubernetes')).toBe('system_u:object_r:nipkubelet_conf_t:s0');
    expect(get('kubernetes/kubelet.conf', 'user.keep')).toBe('me');
    // Without a label the entry keeps what new had (here: none).
    expect(get('issue')).toBeUndefined();
  });
});
