// Local faults, through the real CLI: ENOSPC while staging (a small tmpfs in a private mount
// namespace), EACCES on the staging directory (as nobody: root bypasses permission bits), and
// kill -9 at chosen /etc apply actions (failpoint etc.apply.action:kill@k) followed by a rerun.
// Each ends in one clear line with the right exit code and nothing left in place, or converges.
import { randomBytes } from 'node:crypto';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { buildOciLayout, gzip, OCI_LAYER_GZIP, OCI_LAYER_TAR, pushLayout, simpleTar } from '../helpers/oci-image.ts';
import { startRegistry, type RunningRegistry } from '../helpers/registry.ts';
import { materialize, realistic, snapshot } from '../etc/helpers.ts';
import { asNobody, releaseNobody, runCli } from './cli.ts';
import { faultCase } from './table.ts';

const CAT = 'local';
let tmp: string;
let reg: RunningRegistry;
let conf: string;

beforeAll(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'nip-faults-local-'));
  chmodSync(tmp, 0o755);
  const img = await buildOciLayout(join(tmp, 'src'), {
    tag: 'v1',
    layers: [
      { data: await simpleTar({ 'usr/': '', 'usr/big': randomBytes(2_000_000) }), mediaType: OCI_LAYER_TAR },
      { data: await gzip(await simpleTar({ 'usr/etc/': '', 'usr/etc/os-release': 'ID=local\n' })), mediaType: OCI_LAYER_GZIP },
    ],
  });
  reg = await startRegistry();
  await pushLayout(img.layoutDir, 'v1', reg.host, 'ns/app');
  conf = join(tmp, 'registries.conf');
  writeFileSync(conf, `[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n`);
  chmodSync(conf, 0o644);
});
afterAll(async () => {
  releaseNobody();
  await reg?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

describe('staging faults (pull --dest)', () => {
  faultCase(CAT, 'ENOSPC: staging on a 1 MiB tmpfs, image needs 2 MB', 'exit 5 naming the entry and ENOSPC; no DIR, no DIR.partial', async () => {
    const mnt = join(tmp, 'small');
    mkdirSync(mnt);
    const out = join(mnt, 'out');
    // Everything happens inside the namespace; the listing shows what the failed pull left.
    const script = 'mount -t tmpfs -o size=1m none "$1" && shift && "$@"; rc=$?; ls -A "$MNT"; exit $rc';
    const r = await runCli(['pull', `${reg.host}/ns/app:v1`, '--dest', out, '--registries-conf', conf], {
      argv0: ['env', `MNT=${mnt}`, 'unshare', '-m', '--propagation', 'private', 'sh', '-c', script, 'sh', mnt, process.execPath],
    });
    expect(r.code).toBe(5);
    expect(r.errorLine).toMatch(/cannot write "usr\/big": ENOSPC/);
    expect(r.errorLine).toMatch(/Fix: free space/);
    expect(r.stdout.trim()).toBe('');
    expect(readdirSync(mnt)).toEqual([]);
    return `exit ${r.code}: ${r.errorLine.replace(/layer \d\/\d sha256:[0-9a-f]{64}: /, '').slice(0, 100)}; tmpfs left empty`;
  });

  faultCase(CAT, 'EACCES: staging parent not writable (run as nobody)', 'exit 5 naming the directory and EACCES; nothing left', async () => {
    const parent = join(tmp, 'root-only');
    mkdirSync(parent, { mode: 0o755 });
    const out = join(parent, 'out');
    // nobody cannot read root's default auth files; an explicit empty one stands in.
    const auth = join(tmp, 'auth.json');
    writeFileSync(auth, '{"auths":{}}');
    chmodSync(auth, 0o644);
    const r = await runCli(['pull', `${reg.host}/ns/app:v1`, '--dest', out, '--registries-conf', conf, '--authfile', auth], {
      argv0: asNobody(), entry: [],
      env: { HOME: '/nonexistent' },
    });
    expect(r.code).toBe(5);
    expect(r.errorLine).toMatch(/EACCES/);
    expect(r.errorLine).toContain(`${out}.partial`);
    expect(readdirSync(parent)).toEqual([]);
    return `exit ${r.code}: ${r.errorLine.slice(0, 110)}`;
  });

  faultCase(CAT, 'kill -9 mid-pull (failpoint registry.blob.chunk:kill@20), then rerun', 'killed; rerun removes the stale DIR.partial and completes', async () => {
    const out = join(tmp, 'killed');
    const args = ['pull', `${reg.host}/ns/app:v1`, '--dest', out, '--registries-conf', conf];
    const first = await runCli(args, { env: { NODE_IMAGE_PIVOT_FAILPOINTS: 'registry.blob.chunk:kill@20' } });
    expect(first.signal).toBe('SIGKILL');
    expect(existsSync(out)).toBe(false);
    const second = await runCli(args);
    expect(second.code, second.stderr).toBe(0);
    expect(existsSync(`${out}.partial`)).toBe(false);
    expect(readdirSync(join(out, 'usr')).sort()).toEqual(['big', 'etc']);
    return `first: ${first.signal}, ${existsSync(`${out}.partial`) ? 'partial kept' : 'no DIR'}; rerun exit 0, tree complete`;
  });
});

describe('staging faults (run --dry-run)', () => {
  // The staging directory on a tmpfs of its own inside a private namespace: read-only, or too
  // small for the blob cache plus the tree while the free-space estimate still passes.
  const runWithStaging = async (name: string, tmpfsOptions: string): Promise<{ code: number | null; errorLine: string; left: string }> => {
    const mnt = join(tmp, name);
    mkdirSync(mnt);
    const cfg = join(tmp, `${name}.json`);
    // The operator's own small filesystem, used as it is (by default staging on a tmpfs gets a tmpfs of its own).
    writeFileSync(cfg, JSON.stringify({ image: `${reg.host}/ns/app:v1`, registriesConf: conf, stagingDir: join(mnt, 'staging'), stateDir: join(tmp, `${name}-state`), spaceFactor: 1, stagingTmpfs: 'off' }));
    const script = 'mount -t tmpfs -o "$OPTS" none "$MNT" && "$@"; rc=$?; ls -A "$MNT" >&2; exit $rc';
    const r = await runCli(['run', '--config', cfg, '--dry-run'], {
      argv0: ['env', `MNT=${mnt}`, `OPTS=${tmpfsOptions}`, 'unshare', '-m', '--propagation', 'private', 'sh', '-c', script, 'sh', process.execPath],
    });
    return { code: r.code, errorLine: r.errorLine, left: readdirSync(mnt).join(',') };
  };

  faultCase(CAT, 'EROFS: staging directory on a read-only filesystem', 'exit 9 naming the staging directory and EROFS', async () => {
    const r = await runWithStaging('ro-staging', 'ro,size=8m');
    expect(r.code, r.errorLine).toBe(9);
    expect(r.errorLine).toMatch(/^preflight: .*EROFS.*staging/);
    expect(r.errorLine).toMatch(/Fix: /);
    return `exit ${r.code}: ${r.errorLine.slice(0, 110)}`;
  });

  faultCase(CAT, 'an application image without usr/ (digests all fine)', 'exit 2 naming the image field, not 4 (verification); staging left without the tree', async () => {
    const app = await buildOciLayout(join(tmp, 'app-src'), { tag: 'v1', layers: [{ data: await simpleTar({ 'app/': '', 'app/server': 'bin' }), mediaType: OCI_LAYER_TAR }] });
    await pushLayout(app.layoutDir, 'v1', reg.host, 'ns/webapp');
    const staging = join(tmp, 'app-staging');
    const cfg = join(tmp, 'app.json');
    writeFileSync(cfg, JSON.stringify({ image: `${reg.host}/ns/webapp:v1`, registriesConf: conf, stagingDir: staging, stateDir: join(tmp, 'app-state') }));
    const r = await runCli(['run', '--config', cfg, '--dry-run']);
    expect(r.code, r.errorLine).toBe(2);
    expect(r.errorLine).toMatch(/^config: image .* has no usr\/ directory \(field image\)\. Fix: point image at a bootable node image/);
    expect(readdirSync(staging).filter((n) => n !== 'blobs')).toEqual([]);
    return `exit ${r.code}: ${r.errorLine.slice(0, 110)}`;
  });

  faultCase(CAT, 'ENOSPC: staging fills up during the pull (blob cache plus tree)', 'exit 9 (the space check, found late) naming ENOSPC and the sizes; not exit 1', async () => {
    const r = await runWithStaging('full-staging', 'size=3m');
    expect(r.code, r.errorLine).toBe(9);
    expect(r.errorLine).toMatch(/^preflight: the staging filesystem at \S+ \(3 MiB, \d+ MiB still used by the blob cache and other files\) filled up during the full pull of \d+ MiB compressed \(ENOSPC\)/);
    expect(r.errorLine).toMatch(/Fix: give the node more RAM or point stagingDir at a larger filesystem/);
    return `exit ${r.code}: ${r.errorLine.slice(0, 110)}`;
  });
});

describe('/etc apply killed at action k (etc-merge CLI), then rerun', () => {
  let fixture: string;
  let merged: ReturnType<typeof snapshot>;
  let old: ReturnType<typeof snapshot>;
  let actions = 0;
  const setUp = (name: string): { base: string; current: string; next: string } => {
    const dir = join(tmp, name);
    cpSync(fixture, dir, { recursive: true, preserveTimestamps: true, verbatimSymlinks: true });
    return { base: join(dir, 'base'), current: join(dir, 'current'), next: join(dir, 'next') };
  };
  const mergeArgs = (p: { base: string; current: string; next: string }): string[] => ['etc-merge', '--base', p.base, '--current', p.current, '--new', p.next, '--json'];

  beforeAll(async () => {
    fixture = join(tmp, 'etc-fixture');
    const trees = realistic();
    for (const [k, spec] of Object.entries({ base: trees.base, current: trees.current, next: trees.next })) {
      mkdirSync(join(fixture, k), { recursive: true });
      materialize(join(fixture, k), spec);
    }
    old = snapshot(join(fixture, 'current'));
    const ref = setUp('etc-reference');
    const r = await runCli(mergeArgs(ref));
    expect(r.code, r.stderr).toBe(0);
    actions = (JSON.parse(r.stdout) as { result: { applied: number } }).result.applied;
    expect(actions).toBeGreaterThan(3);
    merged = snapshot(ref.current);
  });

  const same = (a: ReturnType<typeof snapshot>, b: ReturnType<typeof snapshot>): boolean => JSON.stringify([...a]) === JSON.stringify([...b]);

  for (const which of ['first', 'middle', 'last'] as const) {
    faultCase(CAT, `kill -9 at the ${which} /etc action (etc.apply.action:kill@k)`, '/etc old or merged after the kill; rerun gives merged byte-for-byte', async () => {
      const k = which === 'first' ? 1 : which === 'middle' ? Math.ceil(actions / 2) : actions;
      const p = setUp(`etc-kill-${which}`);
      const killed = await runCli(mergeArgs(p), { env: { NODE_IMAGE_PIVOT_FAILPOINTS: `etc.apply.action:kill@${k}` } });
      expect(killed.signal).toBe('SIGKILL');
      // The next run rolls the journal back first; a dry run shows the pending journal.
      const dry = await runCli([...mergeArgs(p), '--dry-run']);
      expect((JSON.parse(dry.stdout) as { pendingJournals: string[] }).pendingJournals.length).toBe(1);
      const rerun = await runCli(mergeArgs(p));
      expect(rerun.code, rerun.stderr).toBe(0);
      expect((JSON.parse(rerun.stdout) as { recovered: string }).recovered).toBe('rolled-back');
      expect(same(snapshot(p.current), merged)).toBe(true);
      expect(same(old, merged)).toBe(false);
      return `killed at action ${k}/${actions}; rerun rolled back, then applied: byte-for-byte merged`;
    });
  }
});
