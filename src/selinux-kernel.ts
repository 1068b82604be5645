// The kernel's side of SELinux, through selinuxfs (/sys/fs/selinux) as libselinux uses it, so the
// agent needs no native binding and no helper process (each helper is a domain of its own, with
// its own denials):
//   - load a binary policy: one write(2) of the whole image to `load`;
//   - ask the loaded policy what a helper would be allowed before running it: `create` computes
//     the domain an exec transitions to, `access` the permissions between two contexts.
import { closeSync, constants, existsSync, openSync, readFileSync, readSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { PivotError, isErrno } from './errors.ts';

export const SELINUX_FS = '/sys/fs/selinux';

/** PURE: the newest policy.NN the kernel can load, as libselinux picks it (highest NN <= max). */
export function pickPolicyVersion(names: readonly string[], kernelMax: number | undefined): string | undefined {
  const versions = names
    .map((n) => ({ n, v: Number(/^policy\.(\d+)$/.exec(n)?.[1] ?? NaN) }))
    .filter((x) => Number.isInteger(x.v) && (kernelMax === undefined || x.v <= kernelMax))
    .sort((a, b) => b.v - a.v);
  return versions[0]?.n;
}

/** The highest policy version the running kernel supports, or undefined without selinuxfs. */
export function kernelPolicyVersion(selinuxfs = SELINUX_FS): number | undefined {
  try {
    const n = Number(readFileSync(join(selinuxfs, 'policyvers'), 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}

/**
 * Replaces the loaded policy with `image` (the bytes of a policy.NN). The kernel checks the whole
 * image and either switches atomically or keeps the old policy; booleans keep their current
 * values across the reload (security_preserve_bools), as with load_policy.
 */
export function loadPolicyImage(image: Buffer, source: string, selinuxfs = SELINUX_FS): void {
  const path = join(selinuxfs, 'load');
  let fd: number;
  try {
    // No O_CREAT/O_TRUNC: selinuxfs files are neither created nor truncated.
    fd = openSync(path, constants.O_WRONLY);
  } catch (err) {
    throw new PivotError('verification', `cannot open ${path} to load the policy from ${source}: ${(err as Error).message}`, {
      path, fix: 'run the agent as root in a domain allowed security:load_policy (initrc_t and unconfined_service_t are)', cause: err,
    });
  }
  try {
    // selinuxfs takes the policy in exactly one write at offset 0.
    const n = writeSync(fd, image, 0, image.length, 0);
    if (n !== image.length) throw Object.assign(new Error(`short write (${n} of ${image.length} bytes)`), { code: 'EIO' });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'error';
    throw new PivotError('verification', `the kernel refused the SELinux policy ${source} (${code}), so nothing was switched`, {
      path: source,
      fix: `rebuild the node image's policy so that this kernel loads it (it supports policy versions up to ${kernelPolicyVersion(selinuxfs) ?? '?'}), e.g. load_policy or semodule -B in the image build`,
      cause: err,
      facts: { phase: 'selinux' },
    });
  } finally {
    closeSync(fd);
  }
}

/** selinuxfs transaction files answer a write on the same descriptor. */
function transact(selinuxfs: string, name: string, request: string): string {
  const fd = openSync(join(selinuxfs, name), 'r+');
  try {
    writeSync(fd, request);
    const buf = Buffer.alloc(4096);
    const n = readSync(fd, buf, 0, buf.length, null);
    return buf.subarray(0, n).toString('utf8').replace(/\0.*$/s, '').trim();
  } finally {
    closeSync(fd);
  }
}

/** The kernel's number of an object class (it varies by policy). */
function classIndex(selinuxfs: string, tclass: string): number {
  return Number(readFileSync(join(selinuxfs, 'class', tclass, 'index'), 'utf8').trim());
}

/** PURE: the access-vector bit of a permission from its selinuxfs number (1-based). */
export function permBit(value: number): number {
  return (1 << (value - 1)) >>> 0;
}

function permBitOf(selinuxfs: string, tclass: string, perm: string): number | undefined {
  const file = join(selinuxfs, 'class', tclass, 'perms', perm);
  return existsSync(file) ? permBit(Number(readFileSync(file, 'utf8').trim())) : undefined;
}

/** PURE: the `access` answer, "allowed decided auditallow auditdeny seqno flags" in hex. */
export function parseAccessAnswer(text: string): { allowed: number; permissive: boolean } {
  const f = text.split(/\s+/);
  if (f.length < 5) throw new Error(`unexpected selinuxfs access answer ${JSON.stringify(text)}`);
  return { allowed: Number.parseInt(f[0]!, 16) >>> 0, permissive: (Number.parseInt(f[5] ?? '0', 16) & 1) === 1 };
}

/** The domain a process in `scon` enters when it executes a file labelled `exe`. */
export function execDomain(scon: string, exe: string, selinuxfs = SELINUX_FS): string {
  return transact(selinuxfs, 'create', `${scon} ${exe} ${classIndex(selinuxfs, 'process')}`);
}

/** Would the loaded policy allow `perms` from scon on tcon:tclass (without logging a denial)? */
export function allowed(scon: string, tcon: string, tclass: string, perms: readonly string[], selinuxfs = SELINUX_FS): boolean {
  let want = 0;
  for (const p of perms) {
    const bit = permBitOf(selinuxfs, tclass, p);
    if (bit === undefined) return false;
    want = (want | bit) >>> 0;
  }
  const answer = parseAccessAnswer(transact(selinuxfs, 'access', `${scon} ${tcon} ${classIndex(selinuxfs, tclass)} ${want.toString(16)}`));
  return answer.permissive || ((answer.allowed & want) >>> 0) === (want >>> 0);
}

/** The calling process's own context, e.g. system_u:system_r:initrc_t:s0. */
export function currentContext(): string | undefined {
  try {
    return readFileSync('/proc/self/attr/current', 'utf8').replace(/\0/g, '').trim() || undefined;
  } catch {
    return undefined;
  }
}

const EXEC_ATTR = '/proc/thread-self/attr/exec';

/**
 * PID 1's context when SELinux is on and the agent shares PID 1's mount namespace, else
 * undefined. A mount that PID 1 makes lands in PID 1's namespace, so the agent may hand it one
 * only when that namespace is its own.
 */
export function initDomainWhenSelinux(selinuxfs = SELINUX_FS): string | undefined {
  if (!ownDomainWhenSelinux(selinuxfs)) return undefined;
  try {
    if (statSync('/proc/1/ns/mnt').ino !== statSync('/proc/self/ns/mnt').ino) return undefined;
    return readFileSync('/proc/1/attr/current', 'utf8').replace(/\0/g, '').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** The agent's own context when SELinux is on (selinuxfs mounted), else undefined. */
export function ownDomainWhenSelinux(selinuxfs = SELINUX_FS): string | undefined {
  return existsSync(join(selinuxfs, 'enforce')) ? currentContext() : undefined;
}

/**
 * Starts a helper in the agent's own domain instead of the one its file type transitions to.
 * mount(8) is mount_exec_t, and mount_t may only mount on mountpoint types (not on the
 * directories the agent makes under /run, initrc_runtime_t, nor on a staged modules_object_t
 * directory) and may not write the agent's stdio; the agent's domain, which does the pivot
 * anyway, may. `spawn` must start its process synchronously (child_process and execa do): the
 * exec context is per thread and is cleared again right after.
 */
export function spawnInOwnDomain<T>(spawn: () => T, selinuxfs = SELINUX_FS): T {
  const self = ownDomainWhenSelinux(selinuxfs);
  if (!self) return spawn();
  try {
    writeExecAttr(self);
  } catch {
    return spawn();
  }
  try {
    return spawn();
  } finally {
    // A lone newline resets the exec context (selinux_setprocattr).
    writeExecAttr('\n');
  }
}

/**
 * Opened without O_CREAT ('r+'): the attr file always exists, and a creating open is checked
 * as `create` on the process's own type and denied (an AVC line per mount, seen in the VM).
 */
function writeExecAttr(value: string): void {
  writeFileSync(EXEC_ATTR, value, { flag: 'r+' });
}
