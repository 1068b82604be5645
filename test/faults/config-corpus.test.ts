// The bad-config corpus, through the real CLI: `run --config F --dry-run`. Every field of the
// schema with a wrong type, out-of-range and malformed values, missing and conflicting required
// fields, unknown fields (top level and nested), invalid references (images and files) and
// unreadable files. Each must exit 2 with one line naming the field (or the file).
//
// Cases that get past validation reach preflight and resolve, which look at /etc; they run in a
// private mount namespace with an empty tmpfs on /etc so the host's is never read or written.
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configSchema } from '../../src/config.ts';
import { mapLimit } from '../../src/registry/index.ts';
import { asNobody, releaseNobody, runCli, type CliRun } from './cli.ts';
import { faultCase } from './table.ts';

const CAT = 'config';
const ISOLATED_ETC = ['unshare', '-m', '--propagation', 'private', 'sh', '-c', 'mount -t tmpfs none /etc && exec "$@"', 'sh', process.execPath];

interface ConfigCase {
  name: string;
  /** The config file's content (an object is JSON-encoded), or a function making the path. */
  content: unknown;
  /** What the one line must contain: `field X` for schema errors, a path or phrase otherwise. */
  names: string | RegExp;
  argv0?: string[];
  /** Runs the copied single executable as nobody (asNobody) instead of the source. */
  nobody?: boolean;
  /** Writes the config somewhere special; returns its path. */
  place?: (dir: string, text: string) => string;
}

// Made at collection time: the cases embed paths under it.
const tmp = mkdtempSync(join(tmpdir(), 'nip-faults-config-'));
const base = (): Record<string, unknown> => ({ image: 'quay.io/org/node@sha256:' + 'a'.repeat(64), stateDir: join(tmp, 'state'), stagingDir: join(tmp, 'staging') });
const withField = (path: string[], value: unknown): Record<string, unknown> => {
  const cfg = base();
  let o = cfg;
  for (const k of path.slice(0, -1)) o = (o[k] ??= {}) as Record<string, unknown>;
  o[path.at(-1)!] = value;
  return cfg;
};

/** One wrong-typed value per field, derived from the schema's own defaults and kinds. */
function wrongTypeCases(): ConfigCase[] {
  const defaults = configSchema.parse(base()) as Record<string, unknown>;
  const out: ConfigCase[] = [];
  const wrong = (v: unknown): unknown => (typeof v === 'string' ? 42 : typeof v === 'number' ? '3' : typeof v === 'boolean' ? 'yes' : Array.isArray(v) ? 'not-a-list' : 7);
  const fields = Object.keys(configSchema.def.shape).filter((k) => k !== 'stateDir' && k !== 'stagingDir');
  for (const key of [...fields, 'stateDir', 'stagingDir']) {
    const value = defaults[key] ?? (key === 'releaseImage' || key === 'authfile' || key === 'certDir' || key === 'platform' ? 'string' : undefined);
    if (key === 'limits' || key === 'timeouts') {
      out.push({ name: `${key}: wrong type (string)`, content: withField([key], 'lots'), names: `field ${key}` });
      for (const [sub, v] of Object.entries(value as Record<string, unknown>)) {
        out.push({ name: `${key}.${sub}: wrong type`, content: withField([key, sub], wrong(v)), names: `field ${key}.${sub}` });
      }
      continue;
    }
    const cfg = withField([key], wrong(value));
    if (key === 'releaseImage') delete cfg.image;
    out.push({ name: `${key}: wrong type`, content: cfg, names: `field ${key}` });
  }
  return out;
}

const badValues: Array<[string, string[], unknown, string]> = [
  ['staging "deltas"', ['staging'], 'deltas', 'staging'],
  ['concurrency 0', ['concurrency'], 0, 'concurrency'],
  ['concurrency 17', ['concurrency'], 17, 'concurrency'],
  ['concurrency 1.5', ['concurrency'], 1.5, 'concurrency'],
  ['spaceFactor 0.5', ['spaceFactor'], 0.5, 'spaceFactor'],
  ['limits.maxPathLength 70000', ['limits', 'maxPathLength'], 70_000, 'limits.maxPathLength'],
  ['limits.maxEntries -1', ['limits', 'maxEntries'], -1, 'limits.maxEntries'],
  ['timeouts.readSeconds 0', ['timeouts', 'readSeconds'], 0, 'timeouts.readSeconds'],
  ['platform "amd64"', ['platform'], 'amd64', 'platform'],
  ['selinux "enforcing"', ['selinux'], 'enforcing', 'selinux'],
  ['stagingDir relative', ['stagingDir'], 'staging', 'stagingDir'],
  ['authfile relative', ['authfile'], 'auth.json', 'authfile'],
  ['image empty string', ['image'], '', 'image'],
  ['skipIfPathExists[1] relative', ['skipIfPathExists'], ['/ok', 'rel'], 'skipIfPathExists[1]'],
  ['preserve[0] outside /usr', ['preserve'], ['/etc/x'], 'preserve[0]'],
  ['restartUnits[0] not a unit name', ['restartUnits'], ['sshd'], 'restartUnits[0]'],
  ['restartUnits[0] wrong type in list', ['restartUnits'], [42], 'restartUnits[0]'],
  ['isolateTarget not a unit name', ['isolateTarget'], 'multi-user', 'isolateTarget'],
];

function corpus(): ConfigCase[] {
  const cases: ConfigCase[] = [...wrongTypeCases()];
  for (const [name, path, value, field] of badValues) cases.push({ name: `bad value: ${name}`, content: withField(path, value), names: `field ${field}` });
  const none = base();
  delete none.image;
  cases.push(
    { name: 'missing required: neither image nor releaseImage', content: none, names: 'field image' },
    { name: 'conflicting: both image and releaseImage', content: { ...base(), releaseImage: 'quay.io/r/release:4.20' }, names: 'field releaseImage' },
    { name: 'unknown field at the top level (imagee)', content: { ...base(), imagee: 'x' }, names: 'field imagee' },
    { name: 'unknown nested field (limits.maxEntry)', content: withField(['limits', 'maxEntry'], 1), names: 'field limits.maxEntry' },
    { name: 'unknown nested field (timeouts.read)', content: withField(['timeouts', 'read'], 1), names: 'field timeouts.read' },
    { name: 'not JSON', content: '{"image": "x",', names: /is not valid JSON/ },
    { name: 'empty file', content: '', names: /is not valid JSON/ },
    { name: 'top level is an array', content: [base()], names: 'field (top level)' },
    { name: 'top level is null', content: 'null', names: 'field (top level)' },
    // Invalid references: syntactically fine JSON whose values point at nothing usable.
    { name: 'reference: image with uppercase repository', content: { ...base(), image: 'quay.io/Org/node:4.20' }, names: 'field image', argv0: ISOLATED_ETC },
    { name: 'reference: image digest too short', content: { ...base(), image: 'quay.io/org/node@sha256:abc' }, names: 'field image', argv0: ISOLATED_ETC },
    { name: 'reference: releaseImage malformed', content: (() => { const c = base(); delete c.image; return { ...c, releaseImage: 'quay.io/r/release:bad tag' }; })(), names: 'field releaseImage', argv0: ISOLATED_ETC },
    { name: 'reference: authfile does not exist', content: { ...base(), authfile: '/nonexistent/auth.json' }, names: 'field authfile', argv0: ISOLATED_ETC },
    { name: 'reference: certDir does not exist', content: { ...base(), certDir: '/nonexistent/certs.d' }, names: 'field certDir', argv0: ISOLATED_ETC },
    { name: 'reference: registriesConf does not exist', content: { ...base(), registriesConf: '/nonexistent/registries.conf' }, names: 'field registriesConf', argv0: ISOLATED_ETC },
    // Unreadable files (root bypasses permission bits, hence a directory, a FIFO and setpriv).
    { name: 'unreadable: config path does not exist', content: base(), names: /does not exist/, place: (d) => join(d, 'missing.json') },
    { name: 'unreadable: config path is a directory', content: base(), names: /is not a regular file \(it is a directory\)/, place: (d) => { mkdirSync(join(d, 'dir.json')); return join(d, 'dir.json'); } },
    {
      name: 'unreadable: config path is a FIFO (must not hang)', content: base(), names: /is not a regular file \(it is a FIFO\)/,
      place: (d) => { execFileSync('mkfifo', [join(d, 'fifo.json')]); return join(d, 'fifo.json'); },
    },
    {
      name: 'unreadable: mode 0600 file, run as nobody (EACCES)', content: base(), names: /cannot read config .*EACCES/, nobody: true,
      place: (d, text) => { const f = join(d, 'secret.json'); writeFileSync(f, text); chmodSync(f, 0o600); chmodSync(d, 0o755); return f; },
    },
  );
  return cases;
}

const cases = corpus();
const results = new Map<string, CliRun & { file: string }>();

beforeAll(async () => {
  chmodSync(tmp, 0o755);
  await mapLimit(cases, 4, async (c, i) => {
    const dir = join(tmp, `c${i}`);
    mkdirSync(dir);
    const text = typeof c.content === 'string' ? c.content : JSON.stringify(c.content);
    const file = c.place ? c.place(dir, text) : join(dir, 'config.json');
    if (!c.place) writeFileSync(file, text);
    const run = await runCli(['run', '--config', file, '--dry-run'], { timeoutMs: 20_000, ...(c.argv0 ? { argv0: c.argv0 } : {}), ...(c.nobody ? { argv0: asNobody(), entry: [] } : {}) });
    results.set(c.name, { ...run, file });
  });
}, 180_000);
afterAll(() => {
  rmSync(tmp, { recursive: true, force: true });
  releaseNobody();
});

describe('bad config corpus (run --config F --dry-run)', () => {
  it('covers every schema field and at least 50 cases', () => {
    expect(cases.length).toBeGreaterThanOrEqual(50);
    const named = cases.map((c) => c.name.split(':')[0]);
    for (const key of Object.keys(configSchema.def.shape)) expect(named).toContain(key);
  });
  for (const c of cases) {
    faultCase(CAT, c.name, `exit 2 naming ${typeof c.names === 'string' ? c.names : 'the file'}`, () => {
      const r = results.get(c.name)!;
      expect(r.signal, 'killed by the timeout: the CLI hung').toBeNull();
      expect(r.code, r.stderr).toBe(2);
      if (typeof c.names === 'string') expect(r.errorLine).toContain(c.names);
      else expect(r.errorLine).toMatch(c.names);
      expect(r.errorLine.split('\n')).toHaveLength(1);
      // Nothing was started: no state file, no staging.
      expect(() => execFileSync('test', ['-e', join(tmp, 'state', 'state.json')])).toThrow();
      return `exit 2: ${r.errorLine.replace(/\(path "[^"]*"\)|\/tmp\/nip-faults-config-\w+/g, '').replace(/^config: (invalid config )?/, '').slice(0, 110)}`;
    });
  }
});
