// Table tests for the pure parts: reference grammar, registries.conf resolution, auth key lookup,
// WWW-Authenticate parsing, Range/resume and backoff maths, manifest parsing, platform choice.
import { describe, expect, it } from 'vitest';
import { PivotError } from '../../src/errors.ts';
import { badIndexInComponent, parseReference } from '../../src/registry/reference.ts';
import { mergeConfs, parseRegistriesToml, planReference, prefixMatch, sourcesFor } from '../../src/registry/mirrors.ts';
import { type AuthFile, authFileCandidates, authKeysFor, lookupCredentials, normaliseAuthKey, parseWwwAuthenticate, tokenFromResponse, tokenUrl } from '../../src/registry/auth.ts';
import { backoffDelay, networkStage, parseRetryAfter, rangeHeader, resumePlan } from '../../src/registry/transport.ts';
import { parseManifest, selectPlatform, effectiveMediaType, DOCKER_SCHEMA1, OCI_INDEX } from '../../src/registry/manifest.ts';
import { parse as parseToml } from 'smol-toml';
import { mapLimit } from '../../src/registry/blobs.ts';
import { thrown } from '../helpers/thrown.ts';

const D = 'sha256:' + '0'.repeat(64);

describe('parseReference', () => {
  it.each([
    ['docker.io/busybox', 'docker.io', 'library/busybox', undefined, undefined],
    ['docker.io/library/busybox:1.36', 'docker.io', 'library/busybox', '1.36', undefined],
    ['index.docker.io/busybox', 'docker.io', 'library/busybox', undefined, undefined],
    ['quay.io/org/img:4.16', 'quay.io', 'org/img', '4.16', undefined],
    ['localhost/img', 'localhost', 'img', undefined, undefined],
    ['127.0.0.1:5000/a/b/c:tag', '127.0.0.1:5000', 'a/b/c', 'tag', undefined],
    [`quay.io/org/img@${D}`, 'quay.io', 'org/img', undefined, D],
    [`quay.io/org/img:4.16@${D}`, 'quay.io', 'org/img', '4.16', D],
    ['registry.example.com:443/a__b/c-d/e.f:T_1.x', 'registry.example.com:443', 'a__b/c-d/e.f', 'T_1.x', undefined],
    ['[::1]:5000/img', '[::1]:5000', 'img', undefined, undefined],
  ])('%s', (text, registry, repository, tag, digest) => {
    const r = parseReference(text);
    expect([r.registry, r.repository, r.tag, r.digest]).toEqual([registry, repository, tag, digest]);
    expect(parseReference(r.toString()).toString()).toBe(r.toString());
  });

  it.each([
    ['quay.io/Org/img', 8, 'O'],
    ['quay.io/org/img!', 15, '!'],
    ['quay.io/org//img', 12, '/'],
    ['quay.io/org/-img', 12, '-'],
    ['quay.io/org/img.', 15, '.'],
    ['quay.io/org/img:', 16, null],
    ['quay.io/org/img:-x', 16, '-'],
    ['quay.io/org/img:a$b', 17, '$'],
    ['quay.io/org/img@sha256:abc', 26, null],
    ['quay.io/org/img@sha256:' + 'G'.repeat(64), 23, 'G'],
    ['quay.io/org/img@md5:' + 'a'.repeat(32), 16, 'm'],
    ['bad_host.io/img', 3, '_'],
    ['host.io:12a/img', 10, 'a'],
    ['', 0, null],
  ])('rejects %j at index %i', (text, index, char) => {
    let err: unknown;
    try { parseReference(text); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(PivotError);
    const e = err as PivotError;
    expect(e.kind).toBe('usage');
    expect(e.exitCode).toBe(2);
    expect(e.facts).toMatchObject({ index, char });
    expect(e.oneLine()).not.toContain('\n');
  });

  it('short names need unqualified-search-registries', () => {
    expect(() => parseReference('busybox')).toThrow(/no registry and registries.conf lists no unqualified-search-registries/);
    expect(parseReference('busybox', { unqualifiedSearch: ['docker.io'] }).toString()).toBe('docker.io/library/busybox');
    expect(parseReference('org/app:1', { unqualifiedSearch: ['quay.io'] }).toString()).toBe('quay.io/org/app:1');
  });

  it('badIndexInComponent', () => {
    expect(badIndexInComponent('a---b')).toBe(-1);
    expect(badIndexInComponent('a___b')).toBe(3);
    expect(badIndexInComponent('a..b')).toBe(2);
  });
});

function conf(text: string) {
  return mergeConfs([parseRegistriesToml(parseToml(text) as Record<string, unknown>, 'test.conf')]);
}

describe('registries.conf', () => {
  const c = conf(`
unqualified-search-registries = ["quay.io"]
[[registry]]
prefix = "quay.io/org"
location = "mirror.local/quay-org"
[[registry.mirror]]
location = "m1.local/o"
[[registry.mirror]]
location = "m2.local/o"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "m3.local/o"
pull-from-mirror = "tag-only"
[[registry]]
prefix = "quay.io"
[[registry]]
location = "legacy.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "lm.local"
[[registry]]
prefix = "*.blocked.io"
blocked = true
`);

  it('orders mirrors, applies pull-from-mirror, rewrites the prefix', () => {
    const tag = sourcesFor(parseReference('quay.io/org/app/x:1'), c);
    expect(tag.sources.map((s) => `${s.ref.toString()} ${s.role}`)).toEqual([
      'm1.local/o/app/x:1 mirror', 'm3.local/o/app/x:1 mirror', 'mirror.local/quay-org/app/x:1 primary',
    ]);
    expect(tag.skipped).toEqual([{ name: 'm2.local/o/app/x', reason: 'mirror is digest-only and the reference is by tag' }]);
    const dig = sourcesFor(parseReference(`quay.io/org/app@${D}`), c);
    expect(dig.sources.map((s) => s.name)).toEqual(['m1.local/o/app', 'm2.local/o/app', 'mirror.local/quay-org/app']);
  });

  it('legacy mirror-by-digest-only makes every mirror digest-only', () => {
    expect(sourcesFor(parseReference('legacy.io/a:1'), c).sources.map((s) => s.name)).toEqual(['legacy.io/a']);
    expect(sourcesFor(parseReference(`legacy.io/a@${D}`), c).sources.map((s) => s.name)).toEqual(['lm.local/a', 'legacy.io/a']);
  });

  it('longest prefix wins; whole path components only; wildcards', () => {
    expect(prefixMatch('quay.io/org', 'quay.io/organisation/x')).toBe(-1);
    expect(sourcesFor(parseReference('quay.io/other/x'), c).sources.map((s) => s.name)).toEqual(['quay.io/other/x']);
    expect(() => sourcesFor(parseReference('a.blocked.io/x'), c)).toThrow(/blocked/);
    expect(sourcesFor(parseReference('unlisted.io/x'), c).sources).toHaveLength(1);
    expect(c.unqualifiedSearch).toEqual(['quay.io']);
  });

  it('short names are tried under each unqualified-search registry, skipping blocked ones', () => {
    const u = conf('unqualified-search-registries = ["a.io", "b.io", "c.io"]\n[[registry]]\nprefix = "b.io"\nblocked = true\n');
    const p = planReference('tools/x:1', u);
    expect(p.sources.map((s) => s.ref.toString())).toEqual(['a.io/tools/x:1', 'c.io/tools/x:1']);
    expect(p.skipped).toEqual([{ name: 'b.io/tools/x', reason: 'blocked by registries.conf' }]);
    expect(planReference('q.io/tools/x', u).sources.map((s) => s.name)).toEqual(['q.io/tools/x']);
    expect(() => planReference('x', conf('unqualified-search-registries = ["b.io", "d.io"]\n[[registry]]\nprefix = "b.io"\nblocked = true\n[[registry]]\nprefix = "d.io"\nblocked = true\n'))).toThrow(/blocked/);
  });

  it('drop-ins: later files replace same-prefix entries and the search list', () => {
    const a = parseRegistriesToml(parseToml('unqualified-search-registries=["a.io"]\n[[registry]]\nprefix="x.io"\nblocked=true') as Record<string, unknown>, 'a');
    const b = parseRegistriesToml(parseToml('[[registry]]\nprefix="x.io"\nlocation="y.io"') as Record<string, unknown>, 'b');
    const m = mergeConfs([a, b]);
    expect(m.registries).toHaveLength(1);
    expect(m.registries[0]!.blocked).toBe(false);
    expect(m.unqualifiedSearch).toEqual(['a.io']);
  });

  it('rejects bad values with the file and field', () => {
    expect(() => conf('[[registry]]\nlocation = "x"\n[[registry.mirror]]\nlocation = "y"\npull-from-mirror = "sometimes"')).toThrow(/registry\[0\]\.mirror\[0\]\.pull-from-mirror must be all, digest-only or tag-only/);
    expect(() => conf('[[registry]]\nlocation = "x"\ninsecure = "yes"')).toThrow(/registry\[0\].insecure must be true or false/);
    expect(() => conf('[registries.search]\nregistries = ["a"]')).toThrow(/v1 format/);
  });
});

describe('auth', () => {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const files: AuthFile[] = [
    { path: '/first.json', auths: { 'quay.io': { auth: b64('host:1') }, 'quay.io/org': { auth: b64('ns:2') } } },
    { path: '/second.json', auths: { 'quay.io/org/app': { auth: b64('repo:3') }, 'https://index.docker.io/v1/': { auth: b64('hub:4') } } },
  ];
  it('keys most specific first', () => {
    expect(authKeysFor('quay.io', 'org/app/sub')).toEqual(['quay.io/org/app/sub', 'quay.io/org/app', 'quay.io/org', 'quay.io']);
  });
  it.each([
    ['quay.io', 'org/app', 'ns', '/first.json'], // the first file with any match wins
    ['quay.io', 'other/app', 'host', '/first.json'],
    ['docker.io', 'library/busybox', 'hub', '/second.json'],
  ])('%s/%s -> %s from %s', (reg, repo, user, file) => {
    const c = lookupCredentials(files, reg, repo)!;
    expect([c.username, c.file]).toEqual([user, file]);
  });
  it('nothing for an unknown registry', () => expect(lookupCredentials(files, 'ghcr.io', 'x')).toBeUndefined());
  it('normalises legacy keys', () => {
    expect(normaliseAuthKey('https://index.docker.io/v1/')).toBe('docker.io');
    expect(normaliseAuthKey('http://reg.local:5000')).toBe('reg.local:5000');
  });
  it('search order', () => {
    expect(authFileCandidates('/x.json', { REGISTRY_AUTH_FILE: '/env.json' })).toEqual(['/x.json']);
    expect(authFileCandidates(undefined, { REGISTRY_AUTH_FILE: '/env.json' })).toEqual(['/env.json', '/run/containers/0/auth.json', '/root/.docker/config.json']);
  });
  it.each([
    ['Bearer realm="https://auth.io/token",service="registry.io",scope="repository:a/b:pull"', [{ scheme: 'bearer', params: { realm: 'https://auth.io/token', service: 'registry.io', scope: 'repository:a/b:pull' } }]],
    ['Basic realm="Registry Realm"', [{ scheme: 'basic', params: { realm: 'Registry Realm' } }]],
    ['Bearer realm="a,b", error="insufficient_scope"', [{ scheme: 'bearer', params: { realm: 'a,b', error: 'insufficient_scope' } }]],
    ['Bearer realm="q\\"x"', [{ scheme: 'bearer', params: { realm: 'q"x' } }]],
    ['Basic realm=x, Bearer realm="https://t"', [{ scheme: 'basic', params: { realm: 'x' } }, { scheme: 'bearer', params: { realm: 'https://t' } }]],
  ])('WWW-Authenticate %s', (header, want) => expect(parseWwwAuthenticate(header)).toEqual(want));
  it('token URL and response', () => {
    const u = tokenUrl({ scheme: 'bearer', params: { realm: 'https://auth.io/token?x=1', service: 'reg' } }, 'a/b');
    expect(u.toString()).toBe('https://auth.io/token?x=1&service=reg&scope=repository%3Aa%2Fb%3Apull');
    expect(tokenFromResponse({ access_token: 't', expires_in: 300 }, 0)).toEqual({ header: 'Bearer t', expiresAt: 295_000 });
    expect(tokenFromResponse({ token: 't' }, 0)?.expiresAt).toBe(55_000);
    expect(tokenFromResponse({}, 0)).toBeUndefined();
  });
});

describe('transport maths', () => {
  it('Range and resume plans', () => {
    expect(rangeHeader(0)).toBeUndefined();
    expect(rangeHeader(1024)).toBe('bytes=1024-');
    expect(resumePlan(200, undefined, 0)).toEqual({ skip: 0 });
    expect(resumePlan(200, undefined, 500)).toEqual({ skip: 500 });
    expect(resumePlan(206, 'bytes 500-999/1000', 500)).toEqual({ skip: 0 });
    expect(resumePlan(206, 'bytes 400-999/1000', 500)).toEqual({ error: 'asked for bytes from 500, got from 400' });
    expect(resumePlan(206, undefined, 500)).toHaveProperty('error');
    expect(resumePlan(416, undefined, 500)).toEqual({ error: 'unexpected HTTP 416' });
  });
  it('backoff is jittered within an exponential cap', () => {
    const b = { baseMs: 100, maxMs: 1000, maxAttempts: 5 };
    expect(backoffDelay(0, b, () => 0.999)).toBe(99);
    expect(backoffDelay(3, b, () => 0.5)).toBe(400);
    expect(backoffDelay(10, b, () => 0.999)).toBe(999);
    expect(backoffDelay(2, b, () => 0)).toBe(0);
  });
  it('Retry-After', () => {
    expect(parseRetryAfter('3')).toBe(3000);
    expect(parseRetryAfter('Wed, 21 Oct 2015 07:28:10 GMT', Date.parse('Wed, 21 Oct 2015 07:28:00 GMT'))).toBe(10_000);
    expect(parseRetryAfter('soon')).toBeUndefined();
    expect(parseRetryAfter(undefined)).toBeUndefined();
  });
  it.each([
    [{ code: 'ENOTFOUND' }, 'dns'],
    [{ code: 'ECONNREFUSED' }, 'connect'],
    [{ code: 'UND_ERR_CONNECT_TIMEOUT' }, 'connect'],
    [{ code: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' }, 'tls'],
    [{ code: 'ERR_TLS_CERT_ALTNAME_INVALID' }, 'tls'],
    [{ errors: [{ code: 'ECONNREFUSED' }] }, 'connect'],
    [{ code: 'UND_ERR_SOCKET' }, 'transfer'],
  ])('network stage of %j', (err, stage) => expect(networkStage(err)).toBe(stage));
});

describe('manifests and platforms', () => {
  const desc = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: D, size: 1 };
  const m = (o: object) => Buffer.from(JSON.stringify(o));
  it('refuses schema1, unknown types, bad descriptors and layer types', () => {
    expect(() => parseManifest(m({ schemaVersion: 1, fsLayers: [] }), 'application/json', 'x')).toThrow(/schema1/);
    expect(() => parseManifest(m({ schemaVersion: 2 }), 'application/vnd.example+json', 'x')).toThrow(/unsupported media type "application\/vnd.example\+json"/);
    expect(() => parseManifest(m({ schemaVersion: 2, config: { ...desc, digest: 'sha256:12' }, layers: [] }), undefined, 'x')).toThrow(/config.digest/);
    expect(() => parseManifest(m({ schemaVersion: 2, config: desc, layers: [{ ...desc, mediaType: 'text/plain' }] }), undefined, 'x')).toThrow(/layers\[0\] has unsupported media type/);
    expect(() => parseManifest(Buffer.from('{'), undefined, 'x')).toThrow(/not valid JSON/);
  });
  it('detects the type from the body when Content-Type is generic', () => {
    expect(effectiveMediaType('application/json', { manifests: [] } as { mediaType?: unknown })).toBe(OCI_INDEX);
    expect(effectiveMediaType(undefined, { schemaVersion: 1 })).toBe(DOCKER_SCHEMA1);
    expect(parseManifest(m({ schemaVersion: 2, config: desc, layers: [desc] }), undefined, 'x').kind).toBe('image');
  });
  const index = [
    { ...desc, platform: { os: 'linux', architecture: 'amd64' } },
    { ...desc, platform: { os: 'linux', architecture: 'arm64' } },
    { ...desc, platform: { os: 'linux', architecture: 'arm', variant: 'v7' } },
    { ...desc, platform: { os: 'unknown', architecture: 'unknown' } },
  ];
  it.each([
    [{ os: 'linux', architecture: 'amd64' }, 0],
    [{ os: 'linux', architecture: 'arm64', variant: 'v8' }, 1],
    [{ os: 'linux', architecture: 'arm', variant: 'v7' }, 2],
  ])('selects %j', (p, i) => expect(selectPlatform(index, p, 'x', true)).toBe(index[i]));
  it('lists available platforms on no match', () => {
    expect(() => selectPlatform(index, { os: 'linux', architecture: 'arm', variant: 'v6' }, 'idx', true)).toThrow('idx has no image for linux/arm/v6; available: linux/amd64, linux/arm64, linux/arm/v7');
    expect(thrown(() => selectPlatform(index, { os: 'linux', architecture: 'arm', variant: 'v6' }, 'idx', true))).toMatchObject({ reason: 'no-platform', permanent: true });
  });
});

describe('mapLimit', () => {
  it('keeps at most N in flight, keeps order, and fails fast', async () => {
    let inFlight = 0;
    let peak = 0;
    const out = await mapLimit([5, 1, 3, 2, 4, 1], 3, async (x) => {
      inFlight++;
      peak = Math.max(peak, inFlight);
      await new Promise((r) => setTimeout(r, x * 5));
      inFlight--;
      return x * 10;
    });
    expect(out).toEqual([50, 10, 30, 20, 40, 10]);
    expect(peak).toBe(3);
    let started = 0;
    await expect(mapLimit([1, 2, 3, 4, 5, 6], 2, async (x) => { started++; if (x === 2) throw new Error('boom'); await new Promise((r) => setTimeout(r, 20)); })).rejects.toThrow('boom');
    expect(started).toBeLessThan(6);
  });
});
