// The provisioning layer: what Ignition would write on first boot, packed as a small squashfs
// that the guest's initramfs (guest/nip-live.boot) stacks as the top lower layer of the overlay
// root, above the cached boot image. So each VM gets its own files without repacking the
// 1 GB boot image, and the files are there before PID 1 starts, as Ignition's are.
//
// The layer always carries the bed's guest agent (guest/nip-vm-agent), installed the Ignition
// way too, at /var/usrlocal/bin (outside /usr, so a pivot keeps it) with its unit in /etc (a
// local addition the /etc merge keeps).
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, chmodSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { applyIgnition, type IgnitionDoc } from '../../../test/helpers/ignition-apply.ts';
import { GUEST_DIR, labelTree, packSquashfs } from './image.ts';

export interface ProvisionFile {
  /** Absolute path in the guest (through /usr/local is fine: it lands in /var/usrlocal). */
  path: string;
  contents: string | Buffer;
  mode?: number;
}

export interface Provision {
  /** Ignition configs applied in order, e.g. `node-image-pivot ignition --embed` output. */
  ignition?: IgnitionDoc[];
  /** Extra files (written after the Ignition configs). */
  files?: ProvisionFile[];
  /**
   * SELinux booleans set (not persistently) early in boot, before any service of the node runs,
   * e.g. { allow_execmem: true } for the policy where the service domain may use execmem.
   */
  selinuxBooleans?: Record<string, boolean>;
  /** Free-form edits of the layer's tree (absolute guest paths are `join(root, path)`). */
  prepare?: (layerRoot: string) => void | Promise<void>;
}

function dataUrl(buf: Buffer): string {
  return `data:;base64,${buf.toString('base64')}`;
}

/** The guest agent as an Ignition config, so it reaches the guest the way everything else does. */
export function agentIgnition(): IgnitionDoc {
  return {
    ignition: { version: '3.4.0' },
    storage: {
      files: [{
        path: '/usr/local/bin/nip-vm-agent',
        mode: 0o755,
        contents: { source: dataUrl(readFileSync(join(GUEST_DIR, 'nip-vm-agent'))) },
      }],
    },
    systemd: {
      units: [{ name: 'nip-vm-agent.service', enabled: true, contents: readFileSync(join(GUEST_DIR, 'nip-vm-agent.service'), 'utf8') }],
    },
  };
}

function booleansIgnition(booleans: Array<[string, boolean]>): IgnitionDoc {
  const args = booleans.map(([k, v]) => `${k}=${v ? 1 : 0}`).join(' ');
  return {
    ignition: { version: '3.4.0' },
    systemd: {
      units: [{
        name: 'nip-vm-booleans.service',
        enabled: true,
        contents: `[Unit]\nDescription=SELinux booleans of this test VM\nDefaultDependencies=no\nBefore=sysinit.target\n\n` +
          `[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/sbin/setsebool ${args}\n\n[Install]\nWantedBy=sysinit.target\n`,
      }],
    },
  };
}

/**
 * Builds the layer tree under `dir/layer` and packs it to `dir/provision.squashfs`, labelled with
 * the boot image's file contexts. Returns the squashfs path.
 */
export async function buildProvisionLayer(dir: string, fileContexts: string, p: Provision = {}): Promise<string> {
  const root = join(dir, 'layer');
  rmSync(root, { recursive: true, force: true });
  // /usr/local is a symlink in the image: writes through it must land in /var/usrlocal here too.
  mkdirSync(join(root, 'usr'), { recursive: true });
  mkdirSync(join(root, 'var/usrlocal'), { recursive: true });
  symlinkSync('../var/usrlocal', join(root, 'usr/local'));
  for (const doc of [agentIgnition(), ...(p.ignition ?? [])]) await applyIgnition(doc, root);
  const booleans = Object.entries(p.selinuxBooleans ?? {});
  if (booleans.length) await applyIgnition(booleansIgnition(booleans), root);
  for (const f of p.files ?? []) {
    const target = join(root, f.path);
    mkdirSync(dirname(target), { recursive: true });
    writeFileSync(target, f.contents);
    chmodSync(target, f.mode ?? 0o644);
  }
  await p.prepare?.(root);
  // /usr stays the boot image's: only the /usr/local redirect lived here.
  if (readdirSync(join(root, 'usr')).join() === 'local' && lstatSync(join(root, 'usr/local')).isSymbolicLink()) {
    rmSync(join(root, 'usr'), { recursive: true });
  } else {
    throw new Error(`the provisioning layer may not write into /usr (found ${readdirSync(join(root, 'usr')).join(', ')}): /usr is the image's`);
  }
  await labelTree(root, fileContexts);
  const out = join(dir, 'provision.squashfs');
  if (existsSync(out)) rmSync(out);
  await packSquashfs(root, out);
  return out;
}
