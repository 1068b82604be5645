// registries.conf against real registries: a mirror that is down is skipped for the next source,
// a digest-only mirror is used only for digest references (under a rewritten path), a blocked
// registry is refused with exit 2, and the log says which source served each blob and why the
// earlier ones were skipped.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildOciLayout, gzip, OCI_LAYER_GZIP, pushLayout, simpleTar, type BuiltImage } from '../helpers/oci-image.ts';
import { freePort, startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { runCli, writeRegistriesConf } from './util.ts';

let tmp: string;
let primary: RunningRegistry;
let mirror: RunningRegistry;
let img: BuiltImage;
let conf: string;
let n = 0;
const out = (): string => join(tmp, `out-${++n}`);

interface LogLine { msg: string; source?: string; reason?: string; skipped?: Array<{ name: string; reason: string }> }
const logLines = (stderr: string): LogLine[] =>
  stderr.split('\n').filter(Boolean).map((l) => JSON.parse(l.replace(/^<\d>/, '')) as LogLine);

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'nip-mirrors-'));
  [primary, mirror] = await Promise.all([startRegistry(), startRegistry()]);
  img = await buildOciLayout(join(tmp, 'src'), { tag: 'v1', layers: [{ data: await gzip(await simpleTar({ m: 'mirrored' })), mediaType: OCI_LAYER_GZIP }] });
  await pushLayout(img.layoutDir, 'v1', primary.host, 'ns/app');
  await pushLayout(img.layoutDir, 'v1', mirror.host, 'copies/ns/app');
  const down = await freePort();
  conf = writeRegistriesConf(tmp, `
[[registry]]
prefix = "${primary.host}/ns"
location = "${primary.host}/ns"
insecure = true

[[registry.mirror]]
location = "127.0.0.1:${down}/ns"
insecure = true

[[registry.mirror]]
location = "${mirror.host}/copies/ns"
insecure = true
pull-from-mirror = "digest-only"

[[registry]]
prefix = "blocked.example.com"
blocked = true
`);
});
afterAll(async () => {
  await Promise.all([primary?.stop(), mirror?.stop()]);
  rmSync(tmp, { recursive: true, force: true });
});

describe('registries.conf mirrors', () => {
  it('by tag: skips the digest-only mirror, falls past the down mirror to the primary', () => {
    const r = runCli(['pull', `${primary.host}/ns/app:v1`, '--oci-layout', out(), '--registries-conf', conf, '--json'], { NODE_IMAGE_PIVOT_LOG_LEVEL: 'info' });
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).source).toBe(`${primary.host}/ns/app`);
    const lines = logLines(r.stderr);
    expect(lines.some((l) => l.msg === 'source skipped' && l.source === `${mirror.host}/copies/ns/app` && /digest-only/.test(l.reason ?? ''))).toBe(true);
    expect(lines.some((l) => l.msg === 'source failed, trying the next one' && /connect to 127\.0\.0\.1:\d+ failed/.test(l.reason ?? ''))).toBe(true);
    const blob = lines.find((l) => l.msg === 'blob verified');
    expect(blob?.source).toBe(`${primary.host}/ns/app`);
    expect(blob?.skipped?.map((s) => s.reason).join(' | ')).toMatch(/digest-only.*connect to/);
  });

  it('by digest: the digest-only mirror serves it, under its rewritten path', () => {
    const r = runCli(['pull', `${primary.host}/ns/app@${img.manifestDigest}`, '--oci-layout', out(), '--registries-conf', conf, '--json'], { NODE_IMAGE_PIVOT_LOG_LEVEL: 'info' });
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary.source).toBe(`${mirror.host}/copies/ns/app`);
    expect(summary.manifestDigest).toBe(img.manifestDigest);
    expect(logLines(r.stderr).filter((l) => l.msg === 'blob verified').every((l) => l.source === `${mirror.host}/copies/ns/app`)).toBe(true);
  });

  it('refuses a blocked registry with exit 2', () => {
    const dir = out();
    const r = runCli(['pull', 'blocked.example.com/ns/app:v1', '--oci-layout', dir, '--registries-conf', conf]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/registry blocked\.example\.com is blocked by registries\.conf/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
  });

  it('a short name is tried under each unqualified-search registry in turn', async () => {
    const down = await freePort();
    const c = writeRegistriesConf(mkdtempSync(join(tmp, 'u-')), `unqualified-search-registries = ["127.0.0.1:${down}", "${primary.host}"]
[[registry]]
location = "127.0.0.1:${down}"
insecure = true
[[registry]]
location = "${primary.host}"
insecure = true
`);
    const r = runCli(['pull', 'ns/app:v1', '--oci-layout', out(), '--registries-conf', c, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const summary = JSON.parse(r.stdout);
    expect(summary.image).toBe(`${primary.host}/ns/app:v1`);
    expect(summary.manifestDigest).toBe(img.manifestDigest);
  });

  it('uses registries.conf.d drop-ins (a later file replaces a prefix)', () => {
    const dir = mkdtempSync(join(tmp, 'd-'));
    const main = writeRegistriesConf(dir, `[[registry]]\nprefix = "${primary.host}"\nblocked = true\n`);
    const dropDir = join(dir, 'registries.conf.d');
    mkdirSync(dropDir);
    writeRegistriesConf(dropDir, `[[registry]]\nprefix = "${primary.host}"\nlocation = "${primary.host}"\ninsecure = true\n`, '50-unblock.conf');
    const r = runCli(['pull', `${primary.host}/ns/app:v1`, '--oci-layout', out(), '--registries-conf', main]);
    expect(r.code, r.stderr).toBe(0);
  });
});
