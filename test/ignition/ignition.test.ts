import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { readUnitAssets, UNIT_NAMES } from '../../src/ignition/assets.ts';
import { buildIgnition, writeIgnition, type IgnitionConfig } from '../../src/ignition/build.ts';
import { generateIgnition } from '../../src/ignition/generate.ts';
import { main } from '../../src/cli.ts';
import { renderExample, recordedSha512, EXAMPLE_PATH } from '../../scripts/ignition/regenerate-example.ts';
import { decodeDataUrl, validateIgnition34 } from './validate.ts';

const root = resolve(import.meta.dirname, '..', '..');
const SHA = 'ab'.repeat(64);
const goodConfig = JSON.stringify({ image: 'registry.example/node@sha256:' + 'a'.repeat(64) });

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'nip-ignition-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

const fileAt = (doc: IgnitionConfig, path: string) => doc.storage.files.find((f) => f.path === path);

describe('the structural validator', () => {
  it('catches what Ignition would reject', () => {
    expect(validateIgnition34({ ignition: { version: '3.3.0' } })).toEqual(['$.ignition.version: must be "3.4.0"']);
    const bad = {
      ignition: { version: '3.4.0' },
      storage: { files: [
        { path: 'relative', mode: '0755', contents: { source: 'file:///x', compression: 'zstd', verification: { hash: 'md5-00' } } },
        { path: '/a' }, { path: '/a', extra: 1 },
      ] },
      systemd: { units: [{ name: 'nosuffix', enabled: 'yes', contents: 3 }] },
    };
    expect(validateIgnition34(bad)).toEqual([
      '$.storage.files[0].path: must be an absolute path',
      '$.storage.files[0].mode: must be an integer (decimal of the octal mode)',
      '$.storage.files[0].contents.source: must be a URL Ignition can fetch',
      '$.storage.files[0].contents.compression: must be gzip or empty',
      '$.storage.files[0].contents.verification.hash: must be sha512-<128 hex> or sha256-<64 hex>',
      '$.storage.files[2].extra: unknown field',
      '$.storage.files[2].path: duplicate /a',
      '$.systemd.units[0].name: must be a unit name with its type suffix',
      '$.systemd.units[0].enabled: must be a boolean',
      '$.systemd.units[0].contents: must be a string',
    ]);
  });
});

describe('buildIgnition', () => {
  it('installs the binary from a verified URL, the config, the generator and the units from units/', () => {
    const assets = readUnitAssets(join(root, 'units'));
    const doc = buildIgnition({ configText: goodConfig, binary: { kind: 'remote', url: 'https://m.example/nip.gz', sha512: SHA.toUpperCase(), compression: 'gzip' }, assets });
    expect(validateIgnition34(doc)).toEqual([]);
    expect(doc.ignition.version).toBe('3.4.0');
    // The hash stays the uncompressed binary's: the spec says it describes the decompressed contents.
    expect(fileAt(doc, '/usr/local/bin/node-image-pivot')).toEqual({
      path: '/usr/local/bin/node-image-pivot', overwrite: true, mode: 493,
      contents: { compression: 'gzip', source: 'https://m.example/nip.gz', verification: { hash: `sha512-${SHA}` } },
    });
    const plain = buildIgnition({ configText: goodConfig, binary: { kind: 'remote', url: 'https://m.example/nip', sha512: SHA, compression: 'none' }, assets });
    expect(fileAt(plain, '/usr/local/bin/node-image-pivot')?.contents).toEqual({ source: 'https://m.example/nip', verification: { hash: `sha512-${SHA}` } });
    const cfg = fileAt(doc, '/etc/node-image-pivot/config.json')!;
    expect(decodeDataUrl(cfg.contents.source).toString()).toBe(goodConfig);
    const gen = fileAt(doc, '/etc/systemd/system-generators/node-image-pivot-generator')!;
    expect(gen.mode).toBe(0o755);
    expect(decodeDataUrl(gen.contents.source).toString()).toBe(readFileSync(join(root, 'units/node-image-pivot-generator'), 'utf8'));
    expect(doc.systemd.units.map((u) => u.name)).toEqual([...UNIT_NAMES]);
    for (const u of doc.systemd.units) expect(u.contents).toBe(readFileSync(join(root, 'units', u.name), 'utf8'));
  });

  it('refuses a URL Ignition cannot fetch and a malformed hash', () => {
    const assets = readUnitAssets(join(root, 'units'));
    expect(() => buildIgnition({ configText: goodConfig, binary: { kind: 'remote', url: 'file:///nip', sha512: SHA, compression: 'gzip' }, assets })).toThrow(/cannot be fetched/);
    expect(() => buildIgnition({ configText: goodConfig, binary: { kind: 'remote', url: 'https://m/nip', sha512: 'abc', compression: 'gzip' }, assets })).toThrow(/128 hex/);
  });
});

describe('embedding the binary', () => {
  it('streams it gzip-compressed as base64 data, with the sha512 of the uncompressed bytes', async () => {
    const bin = join(dir, 'fake-binary');
    // Incompressible and compressible parts, and a length that is not a multiple of 3.
    const bytes = Buffer.concat([randomBytes(200_001), Buffer.alloc(300_000, 7)]);
    writeFileSync(bin, bytes);
    const out = join(dir, 'embed.ign');
    await generateIgnition({ config: writeConfig(goodConfig), binary: { kind: 'embed', path: bin }, output: out });
    const doc = JSON.parse(readFileSync(out, 'utf8')) as IgnitionConfig;
    expect(validateIgnition34(doc)).toEqual([]);
    const f = fileAt(doc, '/usr/local/bin/node-image-pivot')!;
    expect(f.mode).toBe(493);
    expect(f.contents.compression).toBe('gzip');
    expect(f.contents.source.startsWith('data:;base64,')).toBe(true);
    expect(gunzipSync(decodeDataUrl(f.contents.source)).equals(bytes)).toBe(true);
    expect(f.contents.verification?.hash).toBe(`sha512-${createHash('sha512').update(bytes).digest('hex')}`);
  });

  it('a missing binary is a clear error and leaves no output behind', async () => {
    const out = join(dir, 'embed.ign');
    await expect(generateIgnition({ config: writeConfig(goodConfig), binary: { kind: 'embed', path: join(dir, 'nope') }, output: out }))
      .rejects.toMatchObject({ kind: 'usage', fix: expect.stringMatching(/npm run build/) });
    expect(existsSync(out)).toBe(false);
    expect(readdir()).toEqual(['config.json']);
  });

  it('writeIgnition keeps the remote form byte-identical to JSON.stringify', async () => {
    const doc = buildIgnition({ configText: goodConfig, binary: { kind: 'remote', url: 'https://m/nip', sha512: SHA, compression: 'gzip' }, assets: readUnitAssets(join(root, 'units')) });
    const chunks: string[] = [];
    const { Writable } = await import('node:stream');
    await writeIgnition(doc, { kind: 'remote', url: 'https://m/nip', sha512: SHA, compression: 'gzip' }, new Writable({ write(c: Buffer, _e, d) { chunks.push(c.toString()); d(); } }));
    expect(chunks.join('')).toBe(`${JSON.stringify(doc, null, 2)}\n`);
  });
});

function writeConfig(text: string): string {
  const p = join(dir, 'config.json');
  writeFileSync(p, text);
  return p;
}
function readdir(): string[] {
  return readdirSync(dir).sort();
}

describe('node-image-pivot ignition (CLI)', () => {
  const url = ['--binary-url', 'https://m.example/nip', '--binary-sha512', SHA];

  it('writes a valid config with --output', async () => {
    const out = join(dir, 'out.ign');
    expect(await main(['ignition', '--config', writeConfig(goodConfig), ...url, '--output', out])).toBe(0);
    expect(validateIgnition34(JSON.parse(readFileSync(out, 'utf8')))).toEqual([]);
  });

  it('never ships a bad config: exit 2, the field named, no output written', async () => {
    const out = join(dir, 'out.ign');
    const cfg = writeConfig(JSON.stringify({ image: 'x', preserve: ['/etc/nope'] }));
    expect(await main(['ignition', '--config', cfg, ...url, '--output', out])).toBe(2);
    expect(existsSync(out)).toBe(false);
    expect(await main(['ignition', '--config', writeConfig('{ not json'), ...url, '--output', out])).toBe(2);
    expect(await main(['ignition', '--config', join(dir, 'absent.json'), ...url, '--output', out])).toBe(2);
    expect(existsSync(out)).toBe(false);
  });

  it('insists on exactly one binary source, with a verification hash for a URL', async () => {
    const cfg = writeConfig(goodConfig);
    const out = join(dir, 'out.ign');
    expect(await main(['ignition', '--config', cfg, '--output', out])).toBe(2);
    expect(await main(['ignition', '--config', cfg, '--binary-url', 'https://m/nip', '--output', out])).toBe(2);
    expect(await main(['ignition', '--config', cfg, '--binary-sha512', SHA, '--output', out])).toBe(2);
    expect(await main(['ignition', '--config', cfg, ...url, '--embed', '--output', out])).toBe(2);
    expect(await main(['ignition', '--config', cfg, '--binary-url', 'ftp://m/nip', '--binary-sha512', SHA, '--output', out])).toBe(2);
    expect(await main(['ignition', ...url, '--output', out])).toBe(2);
    expect(await main(['ignition', '--config', cfg, ...url, '--compression', 'zstd', '--output', out])).toBe(2);
    expect(await main(['ignition', '--config', cfg, '--embed', '--compression', 'gzip', '--output', out])).toBe(2);
    expect(await main(['ignition', '--config', cfg, '--binary-url', 'https://m/nip.gz', '--binary-sha512', SHA, '--compression', 'none', '--output', out])).toBe(2);
    expect(existsSync(out)).toBe(false);
  });

  it('--binary-url emits gzip compression by default, and none on request', async () => {
    const cfg = writeConfig(goodConfig);
    const out = join(dir, 'out.ign');
    const binaryOf = (): IgnitionConfig['storage']['files'][number] => fileAt(JSON.parse(readFileSync(out, 'utf8')) as IgnitionConfig, '/usr/local/bin/node-image-pivot')!;
    expect(await main(['ignition', '--config', cfg, '--binary-url', 'https://m/nip.gz', '--binary-sha512', SHA, '--output', out])).toBe(0);
    expect(binaryOf().contents).toEqual({ compression: 'gzip', source: 'https://m/nip.gz', verification: { hash: `sha512-${SHA}` } });
    expect(await main(['ignition', '--config', cfg, '--binary-url', 'https://m/nip', '--binary-sha512', SHA, '--compression', 'none', '--output', out])).toBe(0);
    expect(binaryOf().contents).toEqual({ source: 'https://m/nip', verification: { hash: `sha512-${SHA}` } });
  });
});

describe('ignition/example.ign', () => {
  it('is what scripts/ignition/regenerate-example.ts produces from units/ today', () => {
    const current = readFileSync(EXAMPLE_PATH, 'utf8');
    expect(current, 'stale: run npm run build, then node scripts/ignition/regenerate-example.ts').toBe(renderExample(recordedSha512(current)));
    expect(validateIgnition34(JSON.parse(current))).toEqual([]);
  });

  it('carries a real build\'s hash, gzip, and a URL that cannot resolve', () => {
    const doc = JSON.parse(readFileSync(EXAMPLE_PATH, 'utf8')) as IgnitionConfig;
    const bin = fileAt(doc, '/usr/local/bin/node-image-pivot')!;
    expect(bin.contents.compression).toBe('gzip');
    expect(new URL(bin.contents.source).hostname).toMatch(/\.invalid$/);
    const sha = recordedSha512();
    expect(sha).toMatch(/^[0-9a-f]{128}$/);
    expect(sha).not.toBe(createHash('sha512').update('').digest('hex'));
  });
});
