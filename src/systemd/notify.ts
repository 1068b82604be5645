// sd_notify(3) for the agent's unit: STATUS= lines show the current phase in `systemctl status`.
// The units are Type=oneshot, so STATUS= is all the agent sends (READY=1 would mean nothing).
// Every npm binding of sd_notify is a native addon, so this goes through systemd-notify(1). For
// STATUS= alone it sends with its *parent's* PID in the credentials, i.e. ours: systemd attributes
// the line to the agent even after systemd-notify has exited, avoiding the race that loses
// notifications from short-lived helpers (test/systemd/notify.test.ts checks this), and it then
// waits on a BARRIER=1 until PID 1 has read the line.
//
// Notifying is best effort: a lost STATUS line must never fail a pivot, so nothing here throws.
//
// Under SELinux systemd-notify runs in a domain of its own (Debian's refpolicy: systemd_notify_t,
// which may not even create its datagram socket). Before each call the loaded policy is asked
// whether that domain gets its socket; when it does not, STATUS= lines are skipped with one
// warning instead of an AVC denial per line. Its stdio is /dev/null: the agent's own stdio are
// sockets that another domain may not be allowed to use.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { log } from '../log.ts';
import { SELINUX_FS, allowed, currentContext, execDomain } from '../selinux-kernel.ts';
import { xattrs } from '../xattr.ts';

export interface NotifyFields {
  STATUS?: string;
}

export interface NotifyOptions {
  /** Defaults to process.env; the message goes nowhere when NOTIFY_SOCKET is unset. */
  env?: NodeJS.ProcessEnv;
  /** Path of systemd-notify (tests). */
  command?: string;
  timeoutMs?: number;
}

/**
 * Pure: the argument list for systemd-notify. Values become one line each, because sd_notify
 * separates fields by newlines: a newline inside STATUS= would smuggle in another field.
 */
export function notifyArgs(fields: NotifyFields): string[] {
  const args: string[] = [];
  for (const [key, value] of Object.entries(fields) as Array<[string, string | undefined]>) {
    if (value === undefined) continue;
    const clean = value.replace(/[\r\n]+/g, ' ').replace(/\0/g, '').trim();
    args.push(`${key}=${clean}`);
  }
  return args;
}

const NOTIFY_PATHS = ['/usr/bin/systemd-notify', '/bin/systemd-notify'];

/**
 * Why the loaded policy would deny systemd-notify its socket, or undefined when it would not
 * (or when there is no SELinux to ask). Asked again each time: the pivot may load a new policy.
 */
export function selinuxBlocksNotify(selinuxfs = SELINUX_FS): string | undefined {
  if (!existsSync(join(selinuxfs, 'access'))) return undefined;
  const self = currentContext();
  const exe = NOTIFY_PATHS.find((p) => existsSync(p));
  if (!self || !exe) return undefined;
  try {
    const label = xattrs().getAttributeSync(exe, 'security.selinux')?.toString('utf8').replace(/\0/g, '');
    if (!label) return undefined;
    const domain = execDomain(self, label, selinuxfs);
    if (allowed(domain, domain, 'unix_dgram_socket', ['create', 'write'], selinuxfs)) return undefined;
    return `SELinux denies ${domain}, the domain ${exe} runs in, its own datagram socket`;
  } catch {
    return undefined;
  }
}

let warnedBlocked = false;

/** Sends `fields`; resolves to whether systemd-notify accepted them (false when not under systemd). */
export async function sdNotify(fields: NotifyFields, opts: NotifyOptions = {}): Promise<boolean> {
  const env = opts.env ?? process.env;
  if (!env.NOTIFY_SOCKET) return false;
  const args = notifyArgs(fields);
  if (!args.length) return false;
  if (opts.command === undefined) {
    const blocked = selinuxBlocksNotify();
    if (blocked) {
      if (!warnedBlocked) log().warn({ reason: blocked }, `STATUS= lines for systemctl status are off: ${blocked}; the journal has the progress (fix: allow the notify socket in the policy, or ignore)`);
      warnedBlocked = true;
      return false;
    }
  }
  try {
    const r = await execa(opts.command ?? 'systemd-notify', args, {
      env,
      extendEnv: false,
      reject: false,
      timeout: opts.timeoutMs ?? 5000,
      stdio: 'ignore',
    });
    return r.exitCode === 0;
  } catch {
    return false;
  }
}

export function notifyStatus(text: string, opts?: NotifyOptions): Promise<boolean> {
  return sdNotify({ STATUS: text }, opts);
}
