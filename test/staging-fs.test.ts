// src/staging-fs.ts: staging that would sit on a tmpfs (the live ISO's /run, capped at 20% of
// RAM and nosuid,nodev,noexec) gets a tmpfs of its own, sized to RAM; the space check counts
// RAM. Pure on mountinfo text, then real inside `unshare -m` (never the host's mounts).
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parseMountinfo } from '../src/mountinfo.ts';
import { parseMeminfo, planStagingFs, stagingFreeBytes, STAGING_TMPFS_SOURCE, type StagingFsInput } from '../src/staging-fs.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const mount = (id: number, parent: number, at: string, fsType: string, source: string, opts = 'rw'): string =>
  `${id} ${parent} 0:${id} / ${at} ${opts} shared:${id} - ${fsType} ${source} rw`;
const liveRoot = [mount(1, 0, '/', 'overlay', 'overlay'), mount(2, 1, '/run', 'tmpfs', 'tmpfs', 'rw,nosuid,nodev,noexec'), mount(3, 1, '/var/lib/disk', 'xfs', '/dev/vda4')];

function input(over: Partial<StagingFsInput> = {}): StagingFsInput {
  return {
    stagingDir: '/run/node-image-pivot/staging', entries: parseMountinfo(liveRoot.join('\n')), stagingDirEmpty: true,
    memTotalBytes: 16 * GiB, reserveBytes: 1 * GiB, mode: 'auto', ...over,
  };
}

describe('planStagingFs', () => {
  it('gives staging on /run a tmpfs of its own, capped at RAM minus the reserve', () => {
    expect(planStagingFs(input())).toMatchObject({ action: 'mount', sizeBytes: 15 * GiB, reason: expect.stringMatching(/tmpfs at \/run/) });
  });

  it('reuses the one an earlier run made, keeps a disk, an operator\'s own mount, files a mount would hide, and "off"', () => {
    const ours = [...liveRoot, mount(9, 2, '/run/node-image-pivot/staging', 'tmpfs', STAGING_TMPFS_SOURCE)].join('\n');
    expect(planStagingFs(input({ entries: parseMountinfo(ours) })).action).toBe('reuse');
    const theirs = [...liveRoot, mount(9, 2, '/run/node-image-pivot/staging', 'tmpfs', 'tmpfs')].join('\n');
    expect(planStagingFs(input({ entries: parseMountinfo(theirs) }))).toMatchObject({ action: 'keep', inRam: true, reason: expect.stringMatching(/mount of its own/) });
    expect(planStagingFs(input({ stagingDir: '/var/lib/disk/staging' }))).toMatchObject({ action: 'keep', inRam: false, reason: expect.stringMatching(/xfs .* not in RAM/) });
    expect(planStagingFs(input({ stagingDirEmpty: false }))).toMatchObject({ action: 'keep', inRam: true, reason: expect.stringMatching(/already holds files/) });
    expect(planStagingFs(input({ mode: 'off' }))).toMatchObject({ action: 'keep', inRam: true, reason: expect.stringMatching(/stagingTmpfs is off/) });
    expect(planStagingFs(input({ memTotalBytes: 1 * GiB }))).toMatchObject({ action: 'keep', inRam: true, reason: expect.stringMatching(/no room beyond the reserve/) });
  });
});

describe('stagingFreeBytes and parseMeminfo', () => {
  it('in RAM, room is bounded by MemAvailable minus the reserve as well as by the filesystem', () => {
    expect(stagingFreeBytes(10 * GiB, false, 1 * GiB, 1 * GiB)).toBe(10 * GiB);
    expect(stagingFreeBytes(10 * GiB, true, 3 * GiB, 1 * GiB)).toBe(2 * GiB);
    expect(stagingFreeBytes(1 * GiB, true, 8 * GiB, 1 * GiB)).toBe(1 * GiB);
    expect(stagingFreeBytes(1 * GiB, true, 512 * MiB, 1 * GiB)).toBe(0);
  });

  it('reads MemTotal and MemAvailable, and names a missing field', () => {
    expect(parseMeminfo('MemTotal:       16000000 kB\nMemFree:  1 kB\nMemAvailable:   12000000 kB\n')).toEqual({ totalBytes: 16000000 * 1024, availableBytes: 12000000 * 1024 });
    expect(() => parseMeminfo('MemTotal: 1 kB\n')).toThrow(/no MemAvailable/);
  });
});

// prepareStagingFs for real: a child in its own mount namespace, with a nosuid,nodev,noexec
// tmpfs standing in for /run.
const canUnshare = process.getuid?.() === 0 && spawnSync('unshare', ['-m', '--propagation', 'private', 'true']).status === 0;

describe.skipIf(!canUnshare)('prepareStagingFs in a private mount namespace', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'nip-staging-fs-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  function inNamespace(script: string): { code: number | null; out: string; err: string } {
    const src = join(import.meta.dirname, '..', 'src', 'staging-fs.ts');
    const file = join(dir, 'child.ts');
    writeFileSync(file, `import { prepareStagingFs } from ${JSON.stringify(src)};\nimport { execFileSync } from 'node:child_process';\nimport { readFileSync } from 'node:fs';\n${script}`);
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', process.execPath, file], {
      encoding: 'utf8', env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' },
    });
    return { code: r.status, out: r.stdout, err: r.stderr };
  }

  it('mounts its own exec,suid,dev tmpfs over a stagingDir on a noexec tmpfs; a rerun reuses it; nothing leaks out', () => {
    const run = join(dir, 'run');
    mkdirSync(run);
    const staging = join(run, 'node-image-pivot', 'staging');
    const r = inNamespace(`
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=16m,nosuid,nodev,noexec', 'tmpfs', ${JSON.stringify(run)}]);
      const cfg = { stagingDir: ${JSON.stringify(staging)}, stagingTmpfs: 'auto', stagingReserveMiB: 256 };
      const first = await prepareStagingFs(cfg);
      const line = readFileSync('/proc/self/mountinfo', 'utf8').split('\\n').find((l) => l.split(' ')[4] === ${JSON.stringify(staging)});
      const second = await prepareStagingFs(cfg);
      process.stdout.write(JSON.stringify({ first, second, line }));
    `);
    expect(r.code, r.err).toBe(0);
    const o = JSON.parse(r.out) as { first: { freeBytes: number; facts: Record<string, unknown> }; second: { facts: Record<string, unknown> }; line: string };
    expect(o.first.facts).toMatchObject({ filesystem: 'own tmpfs', inRam: true, reserveBytes: 256 * MiB });
    expect(o.first.facts.sizeBytes as number).toBeGreaterThan(16 * MiB);
    // More room than /run's 16 MiB cap, and no more than RAM can spare.
    expect(o.first.freeBytes).toBeGreaterThan(16 * MiB);
    expect(o.first.freeBytes).toBeLessThanOrEqual(parseMeminfo(readFileSync('/proc/meminfo', 'utf8')).totalBytes);
    const [mounted] = parseMountinfo(o.line);
    expect(mounted).toMatchObject({ fsType: 'tmpfs', source: STAGING_TMPFS_SOURCE });
    expect(mounted!.options.split(',')).not.toContain('noexec');
    expect(mounted!.options.split(',')).not.toContain('nosuid');
    expect(o.second.facts).toMatchObject({ filesystem: 'own tmpfs', reason: expect.stringMatching(/earlier run/) });
  });

  it('a stagingDir that cannot be created names the path and the fix, and mounts nothing', () => {
    const ro = join(dir, 'ro');
    mkdirSync(ro);
    const r = inNamespace(`
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,ro', 'tmpfs', ${JSON.stringify(ro)}]);
      try {
        await prepareStagingFs({ stagingDir: ${JSON.stringify(join(ro, 'staging'))}, stagingTmpfs: 'auto', stagingReserveMiB: 256 });
        process.stdout.write('no error');
      } catch (e) {
        const mounted = readFileSync('/proc/self/mountinfo', 'utf8').includes(${JSON.stringify(STAGING_TMPFS_SOURCE)});
        process.stdout.write(JSON.stringify({ kind: e.kind, path: e.path, fix: e.fix, mounted }));
      }
    `);
    expect(r.code, r.err).toBe(0);
    expect(JSON.parse(r.out)).toEqual({ kind: 'preflight', path: join(ro, 'staging'), fix: expect.stringMatching(/writable filesystem with room/), mounted: false });
  });
});
