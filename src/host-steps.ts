// The pivot's steps on this host (src/pivot-steps.ts says what each does): each is a thin adapter
// from the pivot's vocabulary (config, resolved image, staged tree, plan) to one module's API.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_REGISTRIES_CONF, inConfigTerms, type Config } from './config.ts';
import { PivotError } from './errors.ts';
import { log } from './log.ts';
import type { PivotSteps, ResolvedImage } from './pivot-steps.ts';
import { openImage, resolveComponent, type RegistryOptions } from './registry/index.ts';
import { applyEtcMerge, formatPlan, pendingEtcJournals, planEtcMerge, recoverEtcJournal, summarizePlan } from './etc/index.ts';
import { isUsrPivotedEitherMode, mountStagedUsr } from './mount.ts';
import { ensureBootedUsr, releaseLeftoverMounts, type OwnMounts } from './mount-recovery.ts';
import { readMountinfo } from './mountinfo.ts';
import { etcLabels, labelStagedTree } from './selinux.ts';
import { resolvedPath, stageImage, stagedPath, stagingRoom } from './staging.ts';
import { decideStagingOnHost } from './staging-mode.ts';
import { withManager } from './systemd/manager.ts';
import { isolate, refreshSystemd } from './systemd/isolate.ts';

/** Every mount the agent makes, at fixed paths below the state and staging directories. */
export function ownMounts(cfg: Config): OwnMounts {
  const state = resolvedPath(cfg.stateDir);
  return { usr: '/usr', bootedUsr: join(state, 'booted-usr'), assembly: join(state, 'usr-assembly'), stagingDir: resolvedPath(cfg.stagingDir) };
}

/** The registry client's options for the pivot's config. */
function registryOptionsFromConfig(cfg: Config): RegistryOptions {
  return {
    ...(cfg.authfile ? { authfile: cfg.authfile } : {}),
    // containers-registries.conf(5): a missing default file means no mirrors, not an error.
    ...(cfg.registriesConf !== DEFAULT_REGISTRIES_CONF || existsSync(cfg.registriesConf) ? { registriesConf: cfg.registriesConf } : {}),
    ...(cfg.certDir ? { certDir: cfg.certDir } : {}),
    ...(cfg.platform ? { platform: cfg.platform } : {}),
    concurrency: cfg.concurrency,
    cacheDir: join(cfg.stagingDir, 'blobs'),
    timeouts: cfg.timeouts,
  };
}

async function resolveImage(cfg: Config): Promise<ResolvedImage> {
  const opts = registryOptionsFromConfig(cfg);
  let reference = cfg.image;
  if (!reference) {
    const found = await resolveComponent(cfg.releaseImage!, cfg.component, opts);
    log().info({ releaseImage: cfg.releaseImage, component: cfg.component, pullspec: found.pullspec, bytesFetched: found.bytesFetched }, `release image names ${cfg.component} ${found.pullspec}`);
    reference = found.pullspec;
  }
  const opened = await openImage(reference, opts);
  try {
    const r = opened.reference;
    return {
      reference,
      ...(cfg.releaseImage ? { releaseImage: cfg.releaseImage } : {}),
      pinned: `${r.registry}/${r.repository}@${opened.manifestDigest}`,
      manifestDigest: opened.manifestDigest,
      compressedBytes: opened.layers.reduce((n, l) => n + l.size, 0),
      layerCount: opened.layers.length,
    };
  } finally {
    await opened.close();
  }
}

export function hostSteps(): PivotSteps {
  return {
    pendingEtcJournal: () => (pendingEtcJournals('/etc').length ? 'pending' : 'none'),
    recoverEtc: async () => recoverEtcJournal('/etc'),
    recoverMounts: async (cfg) => releaseLeftoverMounts(ownMounts(cfg)),

    // Reference and file errors from the registry client name CLI flags; under run they must name
    // the config field.
    resolve: (cfg) => resolveImage(cfg).catch((err: unknown) => { throw inConfigTerms(err, cfg); }),
    stagedPath,
    stagingRoom,
    // The stacking probe mounts (privately) below the state directory, never on the node.
    stagingMode: async (cfg) => decideStagingOnHost(cfg.staging, '/usr', resolvedPath(cfg.stateDir)),
    async pull(cfg, image, progress, choice) {
      // A delta is compared with the booted /usr through the bind the mount phase keeps anyway.
      const own = ownMounts(cfg);
      if (choice?.mode === 'delta') await ensureBootedUsr(own);
      return stageImage(cfg, image, registryOptionsFromConfig(cfg), progress, { ...(choice ? { choice } : {}), bootedUsr: own.bootedUsr });
    },

    async planEtc(cfg, staged) {
      // The booted image's defaults: after a switch (a rerun) /usr is the new image, so the
      // read-only bind of the booted /usr is the base.
      const bootedUsr = ownMounts(cfg).bootedUsr;
      const base = readMountinfo().some((m) => m.mountPoint === bootedUsr) ? join(bootedUsr, 'etc') : '/usr/etc';
      if (!existsSync(base)) {
        throw new PivotError('etc-merge', `the booted image has no ${base} (pristine /etc defaults)`, {
          path: base,
          fix: 'boot an ostree-style image that keeps its /etc defaults at /usr/etc; without them local changes cannot be told apart',
        });
      }
      const plan = await planEtcMerge({ base, current: '/etc', new: join(staged.root, 'usr/etc') });
      const s = summarizePlan(plan);
      return {
        plan,
        report: { actions: s.total, counts: s.counts, warnings: s.warnings.map((w) => w.message), conflicts: s.conflicts, text: formatPlan(plan) },
      };
    },

    label: (cfg, staged) => labelStagedTree({ stagedRoot: staged.root, setting: cfg.selinux, ...(staged.mode === 'delta' ? { deltaOver: ownMounts(cfg).bootedUsr } : {}) }),
    // Either mode: a rerun before pull does not know yet how the tree was staged.
    usrIsPivotedTo: async (cfg, stagedRoot) => isUsrPivotedEitherMode('/usr', stagedRoot, ownMounts(cfg).bootedUsr),

    async mountUsr(cfg, staged) {
      const own = ownMounts(cfg);
      const detached = await releaseLeftoverMounts(own);
      const bootedUsr = await ensureBootedUsr(own);
      const mounted = await mountStagedUsr({
        stagedRoot: staged.root, preserve: cfg.preserve, target: own.usr, workDir: own.assembly,
        // A delta is the top of a read-only overlay whose lower layer is the booted /usr.
        ...(staged.mode === 'delta' ? { mode: 'overlay' as const, lower: own.bootedUsr } : {}),
      });
      return { ...mounted, facts: { ...mounted.facts, bootedUsr, ...(detached.length ? { detachedLeftovers: detached } : {}) } };
    },

    async applyEtc(plan, fileContexts) {
      // New's copies carry the labels of their place in the image (/usr/etc) until relabelled.
      const labels = fileContexts ? await etcLabels(fileContexts, plan.actions) : undefined;
      const r = await applyEtcMerge(plan, labels ? { labels } : {});
      return { applied: r.applied, ...r.counts, ...(labels ? { labelled: labels.size } : {}) };
    },

    refresh: async (cfg) => ({ ...(await withManager((mgr) => refreshSystemd(mgr, { restartUnits: cfg.restartUnits }))) }),

    targetStates: (cfg) => withManager(async (mgr) => {
      const [target, pivotTarget] = await Promise.all([mgr.unitState(cfg.isolateTarget), mgr.unitState('node-image-pivot.target')]);
      return { target: target.activeState, pivotTarget: pivotTarget.activeState };
    }),
    isolate: (cfg) => withManager(async (mgr) => ({ ...(await isolate(mgr, cfg.isolateTarget, cfg.timeouts.isolateSeconds * 1000)) })),
    settle: () => withManager((mgr) => mgr.reload()),
  };
}
