// The installer's path end to end: `node-image-pivot ignition --embed` makes the config, an
// Ignition-style first boot writes it into a fresh boot image (no agent bound in by the test bed),
// and the machine pivots on its own.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createReadStream, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootMachine, defaultAgentBinary } from '../../scripts/testbed/machine.ts';
import { REPO_ROOT } from '../../scripts/testbed/rootfs.ts';
import { KUBELET_MARKER, NODE_VERSION_FILE } from '../helpers/node-image.ts';
import { applyIgnition, type IgnitionDoc } from '../helpers/ignition-apply.ts';
import { validateIgnition34 } from '../ignition/validate.ts';
import { setUpPivotFixture, type PivotFixture } from './pivot-fixture.ts';
import { builtSha512 } from '../../scripts/ignition/regenerate-example.ts';

const REPO_ROOT_DIST = join(REPO_ROOT, 'dist');
let fx: PivotFixture;
let dir: string;

beforeAll(async () => {
  fx = await setUpPivotFixture();
  dir = mkdtempSync(join(tmpdir(), 'nip-ign-e2e-'));
});
afterAll(async () => {
  await fx?.cleanup();
  rmSync(dir, { recursive: true, force: true });
});

/** Boots a boot image provisioned only from `doc`, and checks that it pivots by itself. */
async function provisionAndPivot(doc: IgnitionDoc, name: string): Promise<void> {
  expect(validateIgnition34(doc)).toEqual([]);
  const m = await bootMachine({
    name, agentBinary: null,
    prepare: async (root) => {
      const written = await applyIgnition(doc, root);
      expect(written).toContain('/usr/local/bin/node-image-pivot');
      // The installer's own file, not ours: the loopback registry is plain HTTP.
      mkdirSync(join(root, 'etc/containers'), { recursive: true });
      writeFileSync(join(root, 'etc/containers/registries.conf'), `[[registry]]\nlocation = "${fx.registry.host}"\ninsecure = true\n`);
    },
  });
  try {
    await m.waitForUnit('multi-user.target', 'active', 240_000);
    await m.waitForUnit('kubelet.service', 'active', 60_000);
    const r = await m.exec(['sh', '-c', `cat ${NODE_VERSION_FILE} ${KUBELET_MARKER}; /usr/local/bin/node-image-pivot status --json`], { direct: true });
    expect(r.stdout).toMatch(/^4\.20\.0-e2e\nkubelet 4\.20\.0-e2e/);
    expect(r.stdout).toMatch(/"result": "done"/);
  } finally {
    await m.dispose();
  }
}

describe('ignition', () => {
  it('--binary-url with the default gzip: Ignition fetches dist/node-image-pivot.gz, decompresses and verifies it, and the node pivots', async () => {
    const gz = join(REPO_ROOT_DIST, 'node-image-pivot.gz');
    const server = createServer((req, res) => {
      if (req.url !== '/node-image-pivot.gz') { res.statusCode = 404; res.end(); return; }
      res.setHeader('content-length', statSync(gz).size);
      createReadStream(gz).pipe(res);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/node-image-pivot.gz`;
      const config = join(dir, 'config-url.json');
      writeFileSync(config, JSON.stringify({ image: fx.image.ref }));
      const out = join(dir, 'node-url.ign');
      execFileSync(defaultAgentBinary(), ['ignition', '--config', config, '--binary-url', url, '--binary-sha512', builtSha512(), '--output', out], { stdio: 'pipe' });
      const doc = JSON.parse(readFileSync(out, 'utf8')) as IgnitionDoc;
      expect(doc.storage?.files?.[0]?.contents).toMatchObject({ compression: 'gzip', source: url });
      await provisionAndPivot(doc, 'ignition-url');
    } finally {
      await new Promise((r) => server.close(r));
    }
  });

  it('a boot image provisioned from the generated config pivots by itself', async () => {
    const config = join(dir, 'config.json');
    writeFileSync(config, JSON.stringify({ image: fx.image.ref }));
    const out = join(dir, 'node.ign');
    execFileSync(defaultAgentBinary(), ['ignition', '--config', config, '--embed', '--output', out], { stdio: 'pipe' });
    const doc = JSON.parse(readFileSync(out, 'utf8')) as IgnitionDoc;
    await provisionAndPivot(doc, 'ignition');
  });
});
