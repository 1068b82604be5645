// SELinux for the staged tree (docs/selinux.md). Image tars carry no security.selinux (ostree
// exports drop it), so the staged files get labelled from the NEW image's own policy before
// anything is mounted. Labels are validated against the LOADED policy, and neither the agent's
// domain nor setfiles_t may set a context the loaded policy does not define (no mac_admin), so
// the phase is: load the node image's policy, then label the staged tree with it; a failure
// after the load puts the booted policy back. Only the staged tree is labelled (setfiles -r),
// never /.
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { isAbsolute, join } from 'node:path';
import { execa } from 'execa';
import { runThroughPipe } from './child-output.ts';
import { PivotError, isErrno } from './errors.ts';
import { failpoint } from './failpoints.ts';
import { log } from './log.ts';
import { stageRelabelled } from './unpack/delta/labels.ts';
import { SELINUX_FS, kernelPolicyVersion, loadPolicyImage, pickPolicyVersion } from './selinux-kernel.ts';
import { xattrs } from './xattr.ts';

export { SELINUX_FS };

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

/** PURE over `view`: the newest policy.NN in a policy directory that the kernel can load. */
export function newestPolicyBinary(view: TreeView, policyDir: string, kernelMax?: number): string | undefined {
  const name = pickPolicyVersion(view.list(join(policyDir, 'policy')) ?? [], kernelMax);
  return name ? join(policyDir, 'policy', name) : undefined;
}

const SAFE_TYPE = /^[A-Za-z0-9_.-]+$/;

function labelError(message: string, path: string, fix: string): PivotError {
  return new PivotError('selinux', message, { path, fix, facts: { phase: 'selinux' } });
}

/** The image itself is unusable on this host: retrying cannot help (exit 4, not retried). */
function imageError(message: string, path: string, fix: string): PivotError {
  return new PivotError('verification', message, { path, fix, facts: { phase: 'selinux' } });
}

/** Finds the staged image's own policy and builds the setfiles command for the staged tree. */
export function planLabel(input: LabelInput, view: TreeView = diskView, kernelMax?: number): LabelPlan {
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
      throw imageError('the node image\'s selinux/config sets no SELINUXTYPE', join(dir, 'config'), 'set SELINUXTYPE in the image, or pass the policy type');
    }
    policyType = type;
    selinuxDir = dir;
    break;
  }
  if (policyType === undefined || selinuxDir === undefined) {
    throw imageError('the node image has no SELinux policy (no etc/selinux/config) and this host runs SELinux, so its /usr could not be labelled', etcDirs[0]!,
      'build the node image with its SELinux policy (/usr/etc/selinux), or set "selinux": "off" in the config only if the node never enforces');
  }
  if (!SAFE_TYPE.test(policyType)) {
    throw imageError(`SELINUXTYPE ${JSON.stringify(policyType)} is not a plain name`, join(selinuxDir, 'config'), 'set SELINUXTYPE to a policy name such as targeted');
  }
  const policyDir = join(selinuxDir, policyType);
  const fileContexts = join(policyDir, 'contexts/files/file_contexts');
  if (!view.isFile(fileContexts)) {
    throw imageError(`policy ${policyType} in the node image has no file_contexts`, fileContexts, `ship the ${policyType} policy in the node image, or correct SELINUXTYPE`);
  }
  const policyBinary = newestPolicyBinary(view, policyDir, kernelMax);
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
  const [cmd] = plan.argv;
  let r;
  try {
    r = await runThroughPipe(plan.argv);
  } catch (err) {
    throw labelError(`cannot run ${cmd}: ${(err as Error).message}`, plan.stagedRoot, 'install policycoreutils (setfiles) on the boot image');
  }
  if (r.exitCode !== 0) {
    const missing = r.exitCode === 127;
    const why = r.output.split('\n').filter(Boolean).slice(-1)[0] ?? `exit ${r.exitCode}`;
    throw labelError(`setfiles failed labelling the staged tree: ${why}`, plan.stagedRoot,
      missing ? 'install policycoreutils (setfiles) on the boot image' : `check ${plan.fileContexts} in the node image`);
  }
  const seconds = (performance.now() - started) / 1000;
  log().info({ phase: 'selinux', policy: plan.policyType, seconds }, `labelled ${plan.stagedRoot} with the node image's ${plan.policyType} policy`);
  return { seconds };
}

export type LookupKind = 'file' | 'dir' | 'lnk';

/**
 * The contexts `fileContexts` gives `paths` (absolute, as on the running system), through
 * matchpathcon: it runs in the agent's own domain (bin_t), reads any file the agent can, and
 * takes many paths per call. Paths with a newline cannot be asked and are left out.
 */
export async function lookupContexts(fileContexts: string, items: ReadonlyArray<{ path: string; kind: LookupKind }>): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const kind of ['file', 'dir', 'lnk'] as const) {
    const paths = items.filter((i) => i.kind === kind && !i.path.includes('\n')).map((i) => i.path);
    for (let i = 0; i < paths.length; i += 500) {
      const chunk = paths.slice(i, i + 500);
      const r = await execa('matchpathcon', ['-n', '-m', kind, '-f', fileContexts, ...chunk], { reject: false, stdin: 'ignore' });
      const lines = r.stdout.split('\n');
      if (r.exitCode !== 0 || lines.length !== chunk.length) {
        throw labelError(`matchpathcon could not look up labels in ${fileContexts}: ${r.stderr.trim().split('\n').pop() ?? `exit ${String(r.exitCode)}`}`,
          fileContexts, 'install selinux-utils (matchpathcon) on the boot image, and check the node image\'s file_contexts');
      }
      chunk.forEach((p, j) => { if (lines[j] && lines[j] !== '<<none>>') out.set(p, lines[j]!); });
    }
  }
  return out;
}

/** PURE: the paths below etc/selinux/<type> that setfiles itself reads, and their /etc names. */
export function policyFilesToPrelabel(plan: LabelPlan, names: { contexts: string[]; policy: string[] }): Array<{ staged: string; path: string }> {
  const etcDir = `/etc/selinux/${plan.policyType}`;
  return [
    ...names.contexts.map((n) => ({ staged: join(plan.policyDir, 'contexts/files', n), path: `${etcDir}/contexts/files/${n}` })),
    ...names.policy.map((n) => ({ staged: join(plan.policyDir, 'policy', n), path: `${etcDir}/policy/${n}` })),
  ];
}

/**
 * setfiles_t may read policy files only with their policy labels (file_context_t,
 * policy_config_t), and the staged copies carry the staging directory's. Give them the labels
 * their /etc/selinux counterparts get, looked up in the staged (and by now loaded) policy.
 */
export async function prelabelPolicyFiles(plan: LabelPlan): Promise<number> {
  const names = {
    contexts: (diskView.list(join(plan.policyDir, 'contexts/files')) ?? []).filter((n) => diskView.isFile(join(plan.policyDir, 'contexts/files', n))),
    policy: (diskView.list(join(plan.policyDir, 'policy')) ?? []).filter((n) => diskView.isFile(join(plan.policyDir, 'policy', n))),
  };
  const files = policyFilesToPrelabel(plan, names);
  const labels = await lookupContexts(plan.fileContexts, files.map((f) => ({ path: f.path, kind: 'file' as const })));
  for (const f of files) {
    const label = labels.get(f.path);
    if (label) xattrs().setAttributeSync(f.staged, 'security.selinux', `${label}\0`);
  }
  return labels.size;
}

/** PURE: the /etc merge entries to label, as matchpathcon questions (relative path -> /etc path). */
export function etcLabelQuestions(actions: ReadonlyArray<{ action: string; path: string; entry?: { type: string } }>, etcRoot = '/etc'): Array<{ rel: string; path: string; kind: LookupKind }> {
  const kinds: Record<string, LookupKind> = { file: 'file', dir: 'dir', symlink: 'lnk' };
  const out: Array<{ rel: string; path: string; kind: LookupKind }> = [];
  for (const a of actions) {
    const kind = a.entry ? kinds[a.entry.type] : undefined;
    if (!kind || !['add', 'replace', 'symlink', 'mkdir'].includes(a.action)) continue;
    out.push({ rel: a.path, path: a.path === '' ? etcRoot : `${etcRoot}/${a.path}`, kind });
  }
  return out;
}

/** The labels the loaded (node image's) policy gives the entries the /etc merge writes. */
export async function etcLabels(fileContexts: string, actions: Parameters<typeof etcLabelQuestions>[0]): Promise<Map<string, string>> {
  const questions = etcLabelQuestions(actions);
  const byPath = await lookupContexts(fileContexts, questions);
  const out = new Map<string, string>();
  for (const q of questions) {
    const label = byPath.get(q.path);
    if (label) out.set(q.rel, label);
  }
  return out;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** Where the running system's policy lives: /etc/selinux/<SELINUXTYPE>, from /etc/selinux/config. */
export function bootedPolicyDir(etcSelinux = '/etc/selinux'): string | undefined {
  const text = diskView.readText(join(etcSelinux, 'config'));
  const type = text === undefined ? undefined : parseSelinuxType(text);
  return type && SAFE_TYPE.test(type) ? join(etcSelinux, type) : undefined;
}

export interface PolicySwitch { load: boolean; reason: string }

/** PURE: does the node image's binary policy have to be loaded before its tree can be labelled? */
export function decidePolicySwitch(staged: { binary: string; digest: string }, booted: { binary?: string; digest?: string }): PolicySwitch {
  if (booted.digest === staged.digest) return { load: false, reason: 'the node image\'s policy is the booted one' };
  return { load: true, reason: booted.binary ? `the node image's ${staged.binary} differs from the booted ${booted.binary}` : 'no booted policy file to compare with' };
}

export interface PolicyAndLabel {
  skipped?: string;
  facts?: Record<string, unknown>;
  /** Puts the booted policy back (set when the phase loaded the node image's). */
  undo?: () => Promise<void>;
  /** The node image's file_contexts, for labelling what the /etc merge writes. */
  fileContexts?: string;
}

/**
 * The pivot's selinux phase in one call: load the node image's policy when it differs, then
 * label the staged tree with it. The host is asked first, so a node with SELinux off never needs
 * a policy in the image; "selinux": "off" in the config skips even on an enforcing host.
 */
export async function labelStagedTree(opts: { stagedRoot: string; setting: 'auto' | 'off'; selinuxfs?: string; etcSelinux?: string; deltaOver?: string }): Promise<PolicyAndLabel> {
  if (opts.setting === 'off') return { skipped: 'selinux off in the config' };
  if (!(await selinuxEnabled(opts.selinuxfs))) return { skipped: 'selinux disabled' };
  const selinuxfs = opts.selinuxfs ?? SELINUX_FS;
  const kernelMax = kernelPolicyVersion(selinuxfs);
  const plan = planLabel({ stagedRoot: opts.stagedRoot }, diskView, kernelMax);
  const bootedDir = bootedPolicyDir(opts.etcSelinux);
  const bootedBinary = bootedDir ? newestPolicyBinary(diskView, bootedDir, kernelMax) : undefined;
  if (!plan.policyBinary) {
    throw imageError(`the node image's ${plan.policyType} policy has no binary policy this kernel can load (policy.NN with NN <= ${kernelMax ?? '?'})`, join(plan.policyDir, 'policy'),
      'ship the compiled policy (policy/policy.NN) in the node image, built for this kernel');
  }
  const stagedImage = readFileSync(plan.policyBinary);
  const bootedImage = bootedBinary ? readFileSync(bootedBinary) : undefined;
  const decision = decidePolicySwitch(
    { binary: plan.policyBinary, digest: sha256(stagedImage) },
    { ...(bootedBinary ? { binary: bootedBinary } : {}), ...(bootedImage ? { digest: sha256(bootedImage) } : {}) },
  );
  let undo: (() => Promise<void>) | undefined;
  if (decision.load) {
    failpoint('selinux.load');
    loadPolicyImage(stagedImage, plan.policyBinary, selinuxfs);
    log().info({ phase: 'selinux', policy: plan.policyBinary, reason: decision.reason }, `loaded the node image's SELinux policy ${plan.policyBinary}`);
    if (bootedImage) {
      undo = async () => {
        loadPolicyImage(bootedImage, bootedBinary!, selinuxfs);
        log().warn({ phase: 'selinux', policy: bootedBinary }, `put the booted SELinux policy ${bootedBinary!} back`);
      };
    }
  }
  try {
    const prelabelled = await prelabelPolicyFiles(plan);
    // A delta leaves out files identical but for the label, which only the new policy knows:
    // those the booted /usr would show with another label are copied in first, then labelled.
    const relabel = opts.deltaOver
      ? await stageRelabelled(join(opts.stagedRoot, 'usr'), opts.deltaOver, (items) => lookupContexts(plan.fileContexts, items))
      : undefined;
    if (relabel) log().info({ phase: 'selinux', checked: relabel.checked, copied: relabel.staged.length }, `delta: ${relabel.staged.length} of ${relabel.checked} booted files the overlay shows get another label from the node image's policy, copied into the delta`);
    const r = await labelTree(plan);
    return {
      facts: {
        policy: plan.policyType, policyLoaded: decision.load, why: decision.reason, prelabelled, seconds: r.seconds,
        ...(relabel ? { deltaRelabel: { checked: relabel.checked, copied: relabel.staged.length } } : {}),
      },
      fileContexts: plan.fileContexts,
      ...(undo ? { undo } : {}),
    };
  } catch (err) {
    if (undo) await undo().catch((u: unknown) => log().error({ err: String(u) }, 'putting the booted SELinux policy back failed too'));
    throw err;
  }
}
