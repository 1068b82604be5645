// The single executable must stand alone: no Node, no node_modules, its native xattr addon
// loaded from the embedded SEA asset. Copy it into an empty directory and use it there.
import { beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { xattrs } from '../../src/xattr.ts';

const built = join(import.meta.dirname, '../../dist/node-image-pivot');
let dir: string;
let bin: string;

beforeAll(() => {
  if (!existsSync(built)) throw new Error('dist/node-image-pivot is missing: npm test builds it first (npm run build)');
  dir = mkdtempSync(join(tmpdir(), 'nip-binary-'));
  bin = join(dir, 'node-image-pivot');
  copyFileSync(built, bin);
  spawnSync('chmod', ['755', bin]);
});

function runAlone(args: string[]) {
  // An empty environment: no PATH to a node, no NODE_OPTIONS, nothing inherited.
  return spawnSync(bin, args, { cwd: dir, env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' }, encoding: 'utf8' });
}

describe('the compressed download', () => {
  it('dist/node-image-pivot.gz is the binary, and SHA512SUMS/SHA256SUMS hold both files\' hashes', async () => {
    const { createHash } = await import('node:crypto');
    const { gunzipSync } = await import('node:zlib');
    const raw = readFileSync(built);
    const gz = readFileSync(`${built}.gz`);
    expect(gunzipSync(gz).equals(raw)).toBe(true);
    expect(gz.length).toBeLessThan(raw.length / 2);
    for (const algo of ['sha256', 'sha512']) {
      const sums = readFileSync(join(built, '..', `${algo.toUpperCase()}SUMS`), 'utf8');
      const hex = (b: Buffer): string => createHash(algo).update(b).digest('hex');
      expect(sums).toBe(`${hex(raw)}  node-image-pivot\n${hex(gz)}  node-image-pivot.gz\n`);
    }
  });
});

describe('single executable', () => {
  it('runs alone and reports the embedded Node 24', () => {
    const r = runAlone(['--version']);
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^node-image-pivot \d+\.\d+\.\d+ \(node 24\./);
    expect(readFileSync(bin).includes(Buffer.from('NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2:1'))).toBe(true);
  });

  it('loads its xattr addon from the SEA asset: an /etc merge copies binary xattrs', () => {
    const base = join(dir, 'base');
    const current = join(dir, 'current');
    const next = join(dir, 'new');
    for (const d of [base, current, next]) mkdirSync(d);
    writeFileSync(join(next, 'added.conf'), 'new default\n');
    const value = Buffer.from([0x00, 0xff, 0xc3, 0x28, 0x01]);
    xattrs().setAttributeSync(join(next, 'added.conf'), 'user.nip-binary', value);
    const r = runAlone(['etc-merge', '--base', base, '--current', current, '--new', next]);
    expect(r.status, r.stderr).toBe(0);
    expect(readFileSync(join(current, 'added.conf'), 'utf8')).toBe('new default\n');
    expect(xattrs().getAttributeSync(join(current, 'added.conf'), 'user.nip-binary')).toEqual(value);
  });

  it('embeds the units for the ignition command', () => {
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ image: 'quay.io/openshift/node@sha256:' + 'a'.repeat(64) }));
    const r = runAlone(['ignition', '--config', join(dir, 'config.json'), '--binary-url', 'https://example.com/nip', '--binary-sha512', 'ab'.repeat(64)]);
    expect(r.status, r.stderr).toBe(0);
    const ign = JSON.parse(r.stdout) as { systemd: { units: Array<{ name: string; contents: string }> } };
    expect(ign.systemd.units.map((u) => u.name).sort()).toEqual(['node-image-overlay.service', 'node-image-pivot.service', 'node-image-pivot.target']);
    expect(ign.systemd.units.find((u) => u.name === 'node-image-pivot.service')?.contents).toContain('IgnoreOnIsolate=yes');
  });
});
