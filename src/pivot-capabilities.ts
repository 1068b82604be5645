// The real capabilities behind src/pivot.ts's phases: each is a thin adapter from the pivot's
// vocabulary (config, staged tree, plan) to one module's API.
import { existsSync, readdirSync, realpathSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { DEFAULT_REGISTRIES_CONF, inConfigTerms, type Config } from './config.ts';
import { PivotError } from './errors.ts';
import { log } from './log.ts';
import type { EtcPlanSummary, PivotCapabilities, ResolvedImage, StagedTree } from './pivot.ts';
import { pullProgress, type Progress } from './progress.ts';
import { openImage, resolveComponent, type RegistryOptions } from './registry/index.ts';
import { pullToDest, type PullToDestSummary } from './pull.ts';
import { applyEtcMerge, formatPlan, pendingEtcJournals, planEtcMerge, recoverEtcJournal, summarizePlan, type EtcPlan } from './etc/index.ts';
import { isUsrPivoted, mountStagedUsr } from './mount.ts';
import { ensureBootedUsr, releaseLeftoverMounts, removeTreeWithinMount, type OwnMounts } from './mount-recovery.ts';
import { readMountinfo } from './mountinfo.ts';
import { etcLabels, labelStagedTree } from './selinux.ts';
import { withManager } from './systemd/manager.ts';
import { isolate, refreshSystemd } from './systemd/isolate.ts';

/** The host paths the pivot acts on (tests run the whole agent inside nspawn machines instead). */
export interface HostPaths {
  usr: string;
  etc: string;
  /** A read-only bind of the booted /usr, made before the switch: the stable base of /etc merges. */
  bootedUsr: string;
}

/** A bootc image's identity and what bootc's rules changed, for the pull phase's facts. */
function bootcFacts(s: PullToDestSummary): Record<string, unknown> {
  return {
    ...(s.bootc?.ostreeCommit ? { ostreeCommit: s.bootc.ostreeCommit } : {}),
    ...(s.bootc?.version ? { imageVersion: s.bootc.version } : {}),
    derivedLayers: (s.bootc?.layerCount ?? 0) - (s.bootc?.firstDerivedLayer ?? 0),
    ...(Object.keys(s.filtered).length ? { filtered: s.filtered } : {}),
  };
}

export function hostPaths(cfg: Config): HostPaths {
  return { usr: '/usr', etc: '/etc', bootedUsr: join(cfg.stateDir, 'booted-usr') };
}

/** Mount points appear in /proc/self/mountinfo with symlinks resolved. */
function resolved(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}

/** Every mount the agent makes, at fixed paths below the state and staging directories. */
export function ownMounts(cfg: Config): OwnMounts {
  const state = resolved(cfg.stateDir);
  return { usr: '/usr', bootedUsr: join(state, 'booted-usr'), assembly: join(state, 'usr-assembly'), stagingDir: resolved(cfg.stagingDir) };
}

function registryOptions(cfg: Config): RegistryOptions {
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

const hex = (digest: string): string => digest.replace(/^sha256:/, '');


async function isMountpoint(path: string): Promise<boolean> {
  return readMountinfo().some((m) => m.mountPoint === path);
}

export function realCapabilities(): PivotCapabilities {
  let pinned: string | undefined;
  // Set by label(): the node image's file_contexts, loaded by then, which labels what the /etc
  // merge writes (new's copies carry the labels of their place in the image, /usr/etc).
  let fileContexts: string | undefined;

  const caps: PivotCapabilities = {
    stagedPath: (cfg, digest) => join(cfg.stagingDir, hex(digest)),

    pendingEtcJournal() {
      return pendingEtcJournals('/etc').length ? 'pending' : 'none';
    },

    async recoverEtc() {
      return recoverEtcJournal('/etc');
    },

    async resolve(cfg): Promise<ResolvedImage> {
      const opts = registryOptions(cfg);
      let reference = cfg.image;
      if (!reference) {
        const found = await resolveComponent(cfg.releaseImage!, cfg.component, opts);
        log().info({ releaseImage: cfg.releaseImage, component: cfg.component, pullspec: found.pullspec, bytesFetched: found.bytesFetched }, `release image names ${cfg.component} ${found.pullspec}`);
        reference = found.pullspec;
      }
      const opened = await openImage(reference, opts);
      try {
        const r = opened.reference;
        // Everything after this pulls by digest, so a tag moving mid-pivot cannot mix images.
        pinned = `${r.registry}/${r.repository}@${opened.manifestDigest}`;
        return {
          reference,
          ...(cfg.releaseImage ? { releaseImage: cfg.releaseImage } : {}),
          manifestDigest: opened.manifestDigest,
          compressedBytes: opened.layers.reduce((n, l) => n + l.size, 0),
          layerCount: opened.layers.length,
        };
      } finally {
        await opened.close();
      }
    },

    async pull(cfg, image, progress: Progress): Promise<StagedTree> {
      const root = caps.stagedPath(cfg, image.manifestDigest);
      const others = (existsSync(cfg.stagingDir) ? readdirSync(cfg.stagingDir) : [])
        .filter((name) => name !== 'blobs' && name !== hex(image.manifestDigest));
      // A staged tree that /usr shows is the running system: never delete it, and do not stack
      // a second pivot on it (its /etc merge would take the first image's defaults for local
      // changes). Only a staged tree is named by a bare digest; `.unpacked`, `.mnt` are scratch.
      const live = others.find((name) => /^[0-9a-f]{64}$/.test(name) && isUsrPivoted('/usr', join(cfg.stagingDir, name)));
      if (live) {
        // A config error (exit 2, not retried): the config names an image this boot cannot take.
        throw new PivotError('config', `/usr already shows another node image (sha256:${live}) this boot`, {
          path: join(cfg.stagingDir, live),
          field: cfg.image ? 'image' : 'releaseImage',
          fix: `reboot to pivot to ${image.manifestDigest}; a second pivot to a different image in one boot is not supported`,
        });
      }
      if (existsSync(root)) return { root, reused: true, facts: {} };
      // Leftovers of interrupted runs and of other images only take RAM on a live ISO.
      // Never across a mount point: an interrupted run's mounts are detached in preflight, and
      // anything still mounted here is not ours to walk into.
      for (const name of others) removeTreeWithinMount(join(resolved(cfg.stagingDir), name));
      const unpacked = `${root}.unpacked`;
      const summary = await pullToDest(pinned ?? image.reference, unpacked, registryOptions(cfg), {
        limits: cfg.limits,
        allowDevices: cfg.allowDevices,
        keepSysroot: cfg.keepSysroot,
        // `systemctl status` and a terminal show how far the pull is (throttled in Progress).
        onProgress: pullProgress(progress),
      });
      // ostree-native images export /usr/etc as /etc; the new /usr carries its defaults at
      // usr/etc again, as the base of the next merge and for ostree's own tools.
      if (existsSync(join(unpacked, 'etc')) && !existsSync(join(unpacked, 'usr/etc'))) renameSync(join(unpacked, 'etc'), join(unpacked, 'usr/etc'));
      if (!existsSync(join(unpacked, 'usr'))) {
        rmSync(unpacked, { recursive: true, force: true });
        // The digests matched: the config names the wrong kind of image (exit 2, not retried).
        const field = cfg.image ? 'image' : 'releaseImage';
        throw new PivotError('config', `image ${image.reference} has no usr/ directory`, {
          field, fix: `point ${field} at a bootable node image (an OS image with /usr), not an application image`,
        });
      }
      renameSync(unpacked, root);
      // Verified blobs are only needed until the tree is complete.
      rmSync(join(cfg.stagingDir, 'blobs'), { recursive: true, force: true });
      return {
        root, reused: false,
        facts: {
          layers: summary.layers, entries: summary.entries, compressedBytes: summary.compressedBytes, expandedBytes: summary.expandedBytes, seconds: summary.seconds,
          // `status` shows which ostree commit and image version the node now runs.
          ...(summary.bootc ? bootcFacts(summary) : {}),
        },
      };
    },

    async label(cfg, staged) {
      const r = await labelStagedTree({ stagedRoot: staged.root, setting: cfg.selinux });
      fileContexts = r.fileContexts;
      return r;
    },

    async planEtc(cfg, staged) {
      const paths = hostPaths(cfg);
      const bootedUsr = ownMounts(cfg).bootedUsr;
      const base = (await isMountpoint(bootedUsr)) ? join(bootedUsr, 'etc') : join(paths.usr, 'etc');
      if (!existsSync(base)) {
        throw new PivotError('etc-merge', `the booted image has no ${base} (pristine /etc defaults)`, {
          path: base,
          fix: 'boot an ostree-style image that keeps its /etc defaults at /usr/etc; without them local changes cannot be told apart',
        });
      }
      const plan = await planEtcMerge({ base, current: paths.etc, new: join(staged.root, 'usr/etc') });
      const s = summarizePlan(plan);
      const summary: EtcPlanSummary = {
        actions: s.total,
        counts: s.counts,
        warnings: s.warnings.map((w) => w.message),
        conflicts: s.conflicts,
        text: formatPlan(plan),
      };
      return { plan, summary };
    },

    async usrIsPivotedTo(stagedRoot) {
      return isUsrPivoted('/usr', stagedRoot);
    },

    async recoverMounts(cfg) {
      return releaseLeftoverMounts(ownMounts(cfg));
    },

    async mountUsr(cfg, staged) {
      const own = ownMounts(cfg);
      const detached = await releaseLeftoverMounts(own);
      const bootedUsr = await ensureBootedUsr(own);
      const mounted = await mountStagedUsr({ stagedRoot: staged.root, preserve: cfg.preserve, target: own.usr, workDir: own.assembly });
      return { ...mounted, facts: { ...mounted.facts, bootedUsr, ...(detached.length ? { detachedLeftovers: detached } : {}) } };
    },

    async applyEtc(plan) {
      const p = plan as EtcPlan;
      const labels = fileContexts ? await etcLabels(fileContexts, p.actions) : undefined;
      const r = await applyEtcMerge(p, labels ? { labels } : {});
      return { applied: r.applied, ...r.counts, ...(labels ? { labelled: labels.size } : {}) };
    },

    async refresh(cfg) {
      // The node image's policy was loaded in phase selinux, before anything was labelled with it,
      // so Reload() here also makes PID 1 pick up the new file_contexts for what it creates.
      return { ...(await withManager((mgr) => refreshSystemd(mgr, { restartUnits: cfg.restartUnits }))) };
    },

    async settle() {
      await withManager((mgr) => mgr.reload());
    },

    async isolate(cfg) {
      return withManager(async (mgr): Promise<Record<string, unknown>> => {
        const [target, pivot] = await Promise.all([
          mgr.unitState(cfg.isolateTarget),
          mgr.unitState('node-image-pivot.target'),
        ]);
        if (target.activeState === 'active' && pivot.activeState !== 'active') return { skipped: `${cfg.isolateTarget} is already active` };
        return { ...(await isolate(mgr, cfg.isolateTarget, cfg.timeouts.isolateSeconds * 1000)) };
      });
    },
  };
  // Reference and file errors from the registry client name CLI flags; under run they must name
  // the config field.
  const resolveRaw = caps.resolve.bind(caps);
  caps.resolve = (cfg) => resolveRaw(cfg).catch((err: unknown) => { throw inConfigTerms(err, cfg); });
  return caps;
}
