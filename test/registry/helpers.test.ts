// Proves the shared test helpers work against the real docker-registry: plain, Basic+TLS and
// token auth, so failures elsewhere are not the fixtures' fault.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { startRegistry } from '../helpers/registry.ts';
import { startTokenServer } from '../helpers/token-server.ts';
import { buildOciLayout, gzip, OCI_LAYER_GZIP, pushLayout, simpleTar, PushClient } from '../helpers/oci-image.ts';

const tmp = mkdtempSync(join(tmpdir(), 'nip-helpers-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

async function image(name: string) {
  return buildOciLayout(join(tmp, name), { layers: [{ data: await gzip(await simpleTar({ 'etc/': '', 'etc/hello': 'hi\n' })), mediaType: OCI_LAYER_GZIP }], tag: 'v1' });
}

describe('test helpers', () => {
  it('pushes a layout to a plain registry that skopeo can read back', async () => {
    const reg = await startRegistry();
    try {
      const img = await image('plain');
      await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/app');
      const out = JSON.parse(execFileSync('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/ns/app:v1`]).toString());
      expect(out.layers[0].digest).toBe(img.layers[0]!.digest);
    } finally {
      await reg.stop();
    }
  });

  it('pushes through Basic auth over TLS and is refused with a wrong password', async () => {
    const reg = await startRegistry({ tls: true, htpasswd: { user: 'alice', password: 'pw' } });
    try {
      const img = await image('basic');
      await pushLayout(img.layoutDir, 'v1', reg.host, 'app', { user: 'alice', password: 'pw', caFile: reg.caFile! });
      await expect(pushLayout(img.layoutDir, 'v1', reg.host, 'app', { user: 'alice', password: 'nope', caFile: reg.caFile! })).rejects.toThrow(/401/);
    } finally {
      await reg.stop();
    }
  });

  it('pushes through token auth', async () => {
    const ts = await startTokenServer({ dir: tmp, users: { bob: 'pw' } });
    const reg = await startRegistry({ tokenAuth: ts.registryConfig });
    try {
      const img = await image('token');
      await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/app', { user: 'bob', password: 'pw' });
      const c = new PushClient(reg.host, 'ns/app', { user: 'bob', password: 'pw' });
      const res = await c.call('GET', `/v2/ns/app/manifests/v1`, { accept: 'application/vnd.oci.image.manifest.v1+json' });
      expect(res.statusCode).toBe(200);
      await res.body.dump();
      await c.close();
      expect(ts.requests.some((r) => r.user === 'bob' && r.status === 200)).toBe(true);
    } finally {
      await reg.stop();
      await ts.stop();
    }
  });
});
