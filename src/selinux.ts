// SELinux for the staged tree. Image tars carry no security.selinux (ostree exports drop it), so
// the staged files get labelled from the NEW image's own policy, before anything is mounted: the
// node image's file_contexts knows about its own new binaries, the booted one does not. Only the
// staged tree is ever labelled (setfiles -r), never /.
import { createReadStream, existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { pipeline } from 'node:stream/promises';
import { isAbsolute, join } from 'node:path';
import { execa } from 'execa';
import { PivotError, isErrno } from './errors.ts';
import { failpoint } from './failpoints.ts';
import { log } from './log.ts';

export const SELINUX_FS = '/sys/fs/selinux';

/** Is the running kernel enforcing or permissive (i.e. labels matter)? */
export async function selinuxEnabled(selinuxfs: string = SELINUX_FS): Promise<boolean> {
  if (existsSync(join(selinuxfs, 'enforce'))) return true;
  if (selinuxfs !== SELINUX_FS) return false;
  try {
    const r = await execa('selinuxenabled', [], { reject: false, stdin: 'ignore' });
    return r.exitCode === 0;
  } catch {
    return false;
  }
}

/** What planLabel may look at in the staged tree; the disk in production, a map in tests. */
export interface TreeView {
  readText(path: string): string | undefined;
  list(dir: string): string[] | undefined;
  isFile(path: string): boolean;
}

export const diskView: TreeView = {
  readText(path) {
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ENOTDIR')) return undefined;
      throw err;
    }
  },
  list(dir) {
    try {
      return readdirSync(dir);
    } catch (err) {
      if (isErrno(err, 'ENOENT', 'ENOTDIR')) return undefined;
      throw err;
    }
  },
  isFile(path) {
    try {
      return statSync(path).isFile();
    } catch {
      return false;
    }
  },
};

export interface LabelInput {
  stagedRoot: string;
  /** Overrides SELINUXTYPE from the image's own config. */
  policyType?: string;
  /** Threads for setfiles; 0 = one per core. */
  threads?: number;
}

export interface LabelPlan {
  stagedRoot: string;
  policyType: string;
  /** <stagedRoot>/etc/selinux/<type> or <stagedRoot>/usr/etc/selinux/<type>. */
  policyDir: string;
  fileContexts: string;
  /** The highest policy.NN, used by -c to check the contexts; absent images are labelled unchecked. */
  policyBinary: string | undefined;
  argv: [string, ...string[]];
}

/** PURE: SELINUXTYPE= from selinux/config text, ignoring comments. */
export function parseSelinuxType(text: string): string | undefined {
  for (const raw of text.split('\n')) {
    const m = /^\s*SELINUXTYPE\s*=\s*"?([A-Za-z0-9_.-]+)"?\s*(#.*)?$/.exec(raw);
    if (m) return m[1];
  }
  return undefined;
}

/** PURE over `view`: the newest policy.NN in a policy directory. */
export function newestPolicyBinary(view: TreeView, policyDir: string): string | undefined {
  const names = (view.list(join(policyDir, 'policy')) ?? [])
    .map((n) => ({ n, v: /^policy\.(\d+)$/.exec(n)?.[1] }))
    .filter((x): x is { n: string; v: string } => x.v !== undefined)
    .sort((a, b) => Number(b.v) - Number(a.v));
  return names[0] ? join(policyDir, 'policy', names[0].n) : undefined;
}

const SAFE_TYPE = /^[A-Za-z0-9_.-]+$/;

function labelError(message: string, path: string, fix: string): PivotError {
  return new PivotError('selinux', message, { path, fix, facts: { phase: 'selinux' } });
}

/** Finds the staged image's own policy and builds the setfiles command for the staged tree. */
export function planLabel(input: LabelInput, view: TreeView = diskView): LabelPlan {
  const stagedRoot = input.stagedRoot.replace(/\/+$/, '');
  if (!isAbsolute(stagedRoot) || stagedRoot === '') {
    // An empty or relative root would make setfiles label the running system.
    throw new PivotError('usage', `stagedRoot must be an absolute path other than /, got ${JSON.stringify(input.stagedRoot)}`, {
      path: input.stagedRoot, fix: 'pass the staging directory',
    });
  }
  // ostree images export /usr/etc as /etc; a tree straight from a build may only have usr/etc.
  const etcDirs = [join(stagedRoot, 'etc/selinux'), join(stagedRoot, 'usr/etc/selinux')];
  let policyType = input.policyType;
  let selinuxDir: string | undefined;
  for (const dir of etcDirs) {
    if (policyType !== undefined && view.isFile(join(dir, policyType, 'contexts/files/file_contexts'))) {
      selinuxDir = dir;
      break;
    }
    const text = view.readText(join(dir, 'config'));
    if (text === undefined) continue;
    const type = policyType ?? parseSelinuxType(text);
    if (type === undefined) {
      throw labelError('the node image\'s selinux/config sets no SELINUXTYPE', join(dir, 'config'), 'set SELINUXTYPE in the image, or pass the policy type');
    }
    policyType = type;
    selinuxDir = dir;
    break;
  }
  if (policyType === undefined || selinuxDir === undefined) {
    throw labelError('the node image has no etc/selinux/config', etcDirs[0]!, 'ship /etc/selinux/config in the node image, or set "selinux": "off" in the config');
  }
  if (!SAFE_TYPE.test(policyType)) {
    throw labelError(`SELINUXTYPE ${JSON.stringify(policyType)} is not a plain name`, join(selinuxDir, 'config'), 'set SELINUXTYPE to a policy name such as targeted');
  }
  const policyDir = join(selinuxDir, policyType);
  const fileContexts = join(policyDir, 'contexts/files/file_contexts');
  if (!view.isFile(fileContexts)) {
    throw labelError(`policy ${policyType} in the node image has no file_contexts`, fileContexts, `ship the ${policyType} policy in the node image, or correct SELINUXTYPE`);
  }
  const policyBinary = newestPolicyBinary(view, policyDir);
  const threads = input.threads ?? 0;
  const argv: [string, ...string[]] = [
    'setfiles',
    // Paths under the root are matched as if it were /, so /usr/bin/kubelet gets bin_t.
    '-r', stagedRoot,
    // Whole contexts, not just the type: the tree has no labels to keep.
    '-F',
    '-T', String(threads),
    ...(policyBinary ? ['-c', policyBinary] : []),
    fileContexts,
    stagedRoot,
  ];
  return { stagedRoot, policyType, policyDir, fileContexts, policyBinary, argv };
}

/** Runs setfiles on the staged tree. Whether to label at all is labelStagedTree's decision. */
export async function labelTree(plan: LabelPlan): Promise<{ seconds: number }> {
  failpoint('selinux.label');
  const started = performance.now();
  const [cmd, ...args] = plan.argv;
  let r;
  try {
    r = await execa(cmd, args, { reject: false, stdin: 'ignore', all: true });
  } catch (err) {
    throw labelError(`cannot run ${cmd}: ${(err as Error).message}`, plan.stagedRoot, 'install policycoreutils (setfiles) on the boot image');
  }
  if (r.failed || r.exitCode !== 0) {
    const why = (r.all ?? '').trim().split('\n').filter(Boolean).slice(-1)[0] ?? `exit ${String(r.exitCode)}`;
    throw labelError(`setfiles failed labelling the staged tree: ${why}`, plan.stagedRoot,
      r.exitCode === undefined ? 'install policycoreutils (setfiles) on the boot image' : `check ${plan.fileContexts} in the node image`);
  }
  const seconds = (performance.now() - started) / 1000;
  log().info({ phase: 'selinux', policy: plan.policyType, seconds }, `labelled ${plan.stagedRoot} with the node image's ${plan.policyType} policy`);
  return { seconds };
}

async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}

/** Fingerprint of a policy directory: its binary policy files and file_contexts, hashed. */
async function policyFingerprint(policyDir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const names = (diskView.list(join(policyDir, 'policy')) ?? []).filter((n) => /^policy\.\d+$/.test(n)).map((n) => `policy/${n}`);
  for (const rel of [...names.sort(), 'contexts/files/file_contexts']) {
    const p = join(policyDir, rel);
    if (diskView.isFile(p)) out.set(rel, await sha256(p));
  }
  return out;
}

/** Does the staged image bring a different policy from the booted one (so it must be reloaded)? */
export async function policyChanged(bootedPolicyDir: string, stagedPolicyDir: string): Promise<boolean> {
  const [a, b] = await Promise.all([policyFingerprint(bootedPolicyDir), policyFingerprint(stagedPolicyDir)]);
  if (a.size !== b.size) return true;
  for (const [k, v] of a) if (b.get(k) !== v) return true;
  return false;
}

/**
 * PURE: how to make the kernel load the policy now in /etc. With a module store (/var/lib/selinux/
 * <type>), `semodule -R` rebuilds it from the modules so local customisations stay; without one,
 * load_policy loads the binary policy as shipped.
 */
export function reloadPolicyArgv(opts: { hasModuleStore: boolean }): [string, ...string[]] {
  return opts.hasModuleStore ? ['semodule', '-R'] : ['load_policy'];
}

/**
 * The pivot's selinux phase in one call. The host is asked first, so a node with SELinux off never
 * needs a policy in the image; "selinux": "off" in the config skips even on an enforcing host.
 */
export async function labelStagedTree(opts: { stagedRoot: string; setting: 'auto' | 'off'; selinuxfs?: string }): Promise<{ skipped?: string; facts?: Record<string, unknown> }> {
  if (opts.setting === 'off') return { skipped: 'selinux off in the config' };
  if (!(await selinuxEnabled(opts.selinuxfs))) return { skipped: 'selinux disabled' };
  const plan = planLabel({ stagedRoot: opts.stagedRoot });
  const r = await labelTree(plan);
  return { facts: { policy: plan.policyType, seconds: r.seconds } };
}
