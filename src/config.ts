// The agent's own config file. Installers write it through Ignition; a typo there must stop the
// pivot with the file, the field and what was expected, never be silently ignored.
import { readFileSync, statSync } from 'node:fs';
import { z } from 'zod';
import { PivotError, isErrno } from './errors.ts';
import { DEFAULT_STATE_DIR } from './state.ts';

export const DEFAULT_CONFIG_PATH = '/etc/node-image-pivot/config.json';
// The defaults the registry client (pull, resolve) and the mount fall back to, named here only.
export const DEFAULT_REGISTRIES_CONF = '/etc/containers/registries.conf';
export const DEFAULT_CONCURRENCY = 3;
/** The image-references tag that names the node image in a release image. */
export const DEFAULT_COMPONENT = 'rhel-coreos';
/** Paths of the booted /usr that stay visible after the switch. */
export const DEFAULT_PRESERVE: readonly string[] = ['/usr/lib/modules'];

const absolutePath = z.string().min(1).refine((p) => p.startsWith('/'), { message: 'must be an absolute path' });
const unitName = z
  .string()
  .regex(/^[A-Za-z0-9:_.\\@-]+\.(service|target|socket|mount|timer|path|slice|scope)$/, {
    message: 'must be a systemd unit name such as sshd.service',
  });

const limitsSchema = z.strictObject({
  /** Entries across all layers. RHCOS node images have ~60k; 10x headroom. */
  maxEntries: z.number().int().positive().default(1_000_000),
  maxPathLength: z.number().int().positive().max(65_536).default(4096),
  /** Total bytes written to the staging tree. */
  maxExpandedBytes: z.number().int().positive().default(32 * 1024 ** 3),
  /** Expanded/compressed bytes per layer, checked once a layer passes 64 MiB expanded. */
  maxExpansionRatio: z.number().positive().default(100),
});

const timeoutsSchema = z.strictObject({
  /** The whole pull's budget, retries included. */
  pullSeconds: z.number().int().positive().default(3600),
  /** No byte for this long on an open response counts as a stall. */
  readSeconds: z.number().int().positive().default(60),
  connectSeconds: z.number().int().positive().default(30),
  /** How long to wait for the isolate job's JobRemoved signal. */
  isolateSeconds: z.number().int().positive().default(900),
  /** Cap of the wait between failed attempts this boot (see retryDelaySeconds); 0 disables. */
  retryBackoffMaxSeconds: z.number().int().min(0).max(3600).default(300),
});

export const DEFAULT_TIMEOUTS = timeoutsSchema.parse({});

export const configSchema = z
  .strictObject({
    /** The node image, by digest (preferred) or tag. */
    image: z.string().min(1).optional(),
    /** Or a release image whose image-references name the node image. */
    releaseImage: z.string().min(1).optional(),
    component: z.string().min(1).default(DEFAULT_COMPONENT),
    authfile: absolutePath.optional(),
    registriesConf: absolutePath.default(DEFAULT_REGISTRIES_CONF),
    certDir: absolutePath.optional(),
    platform: z.string().regex(/^[a-z0-9]+\/[a-z0-9_]+(\/[a-z0-9]+)?$/, { message: 'must be OS/ARCH[/VARIANT], e.g. linux/amd64' }).optional(),
    stagingDir: absolutePath.default('/run/node-image-pivot/staging'),
    /** 'auto': when stagingDir would sit on a tmpfs (/run on a live ISO), mount a tmpfs of its own there, sized to RAM. */
    stagingTmpfs: z.enum(['auto', 'off']).default('auto'),
    /** RAM staging leaves to the node and the agent: the own tmpfs is capped at MemTotal minus this, and the space check counts MemAvailable minus this. */
    stagingReserveMiB: z.number().int().min(0).max(1_048_576).default(1024),
    stateDir: absolutePath.default(DEFAULT_STATE_DIR),
    /**
     * full: stage the whole node image; delta: only what differs from the booted /usr (an
     * overlay over it); auto: delta when the root lives in RAM (src/staging-mode.ts).
     */
    staging: z.enum(['full', 'delta', 'auto']).default('auto'),
    /** Free space needed = compressed size x this factor (expanded tree plus blob cache). */
    spaceFactor: z.number().min(1).max(100).default(3),
    skipIfPathExists: z.array(absolutePath).default([]),
    /** Paths of the booted /usr that stay visible after the switch. */
    preserve: z.array(absolutePath.refine((p) => p.startsWith('/usr/'), { message: 'must be under /usr/' })).default([...DEFAULT_PRESERVE]),
    restartUnits: z.array(unitName).default(['sshd.service']),
    isolateTarget: unitName.default('multi-user.target'),
    concurrency: z.number().int().min(1).max(16).default(DEFAULT_CONCURRENCY),
    allowDevices: z.boolean().default(false),
    /** ostree-native images carry the object store under sysroot/; the hardlinks keep the data. */
    keepSysroot: z.boolean().default(false),
    selinux: z.enum(['auto', 'off']).default('auto'),
    limits: limitsSchema.default(limitsSchema.parse({})),
    timeouts: timeoutsSchema.default({ ...DEFAULT_TIMEOUTS }),
  })
  .superRefine((c, ctx) => {
    if (!c.image && !c.releaseImage) {
      ctx.addIssue({ code: 'custom', path: ['image'], message: 'one of image or releaseImage is required' });
    }
    if (c.image && c.releaseImage) {
      ctx.addIssue({ code: 'custom', path: ['releaseImage'], message: 'give image or releaseImage, not both' });
    }
  });

export type Config = z.infer<typeof configSchema>;

/** `limits[0].maxEntries` style, the way an operator would point at it in the JSON. */
export function fieldPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const p of path) out += typeof p === 'number' ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out || '(top level)';
}

function describeIssue(issue: z.core.$ZodIssue): { field: string; expected: string } {
  if (issue.code === 'unrecognized_keys') {
    const keys = issue.keys.map((k) => [...issue.path, k]);
    return { field: keys.map(fieldPath).join(', '), expected: 'no such field (check the spelling against README "Config")' };
  }
  return { field: fieldPath(issue.path), expected: issue.message.replace(/^Invalid input: /, '') };
}

/** Pure: validates an already-parsed JSON value. `source` names the file in errors. */
export function parseConfig(value: unknown, source: string): Config {
  const result = configSchema.safeParse(value);
  if (result.success) return result.data;
  const [first, ...rest] = result.error.issues.map(describeIssue);
  const more = rest.length ? ` (and ${rest.length} more: ${rest.map((r) => r.field).join(', ')})` : '';
  throw new PivotError('config', `invalid config ${source}: ${first!.field}: ${first!.expected}${more}`, {
    path: source,
    field: first!.field,
    fix: `correct ${first!.field} in ${source}`,
    facts: { issues: result.error.issues.map(describeIssue) },
  });
}

export function loadConfig(path: string = DEFAULT_CONFIG_PATH): Config {
  return parseConfigText(readConfigText(path), path);
}

/** The config file's text; only a regular file is read. */
export function readConfigText(path: string): string {
  try {
    // A FIFO or a device would block the read (or never end); only a regular file is a config.
    const st = statSync(path);
    if (!st.isFile()) {
      throw new PivotError('config', `config ${path} is not a regular file (it is a ${st.isDirectory() ? 'directory' : st.isFIFO() ? 'FIFO' : 'special file'})`, {
        path,
        fix: `write the config as a regular file at ${path} or pass --config FILE`,
      });
    }
    return readFileSync(path, 'utf8');
  } catch (err) {
    if (err instanceof PivotError) throw err;
    if (isErrno(err, 'ENOENT')) {
      throw new PivotError('config', `config file ${path} does not exist`, {
        path,
        fix: `write ${path} (see README "Config") or pass --config FILE`,
      });
    }
    throw new PivotError('config', `cannot read config ${path}: ${(err as Error).message}`, {
      path,
      fix: `make ${path} readable by root`,
      cause: err,
    });
  }
}

/** JSON, then the schema; `path` names the file in errors. */
export function parseConfigText(text: string, path: string): Config {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new PivotError('config', `config ${path} is not valid JSON: ${(err as Error).message}`, {
      path,
      fix: `fix the JSON syntax in ${path}`,
    });
  }
  return parseConfig(json, path);
}

/** Config fields that name files or images; the registry code reports them by path or text. */
const REFERENCE_FIELDS = ['authfile', 'registriesConf', 'certDir'] as const;

/**
 * The registry client's usage/config errors speak of CLI flags (--authfile) and raw references;
 * under `run` the operator must hear which config field to correct. Other errors pass through.
 */
export function inConfigTerms(err: unknown, cfg: Config, source = 'the config'): unknown {
  if (!(err instanceof PivotError) || (err.kind !== 'usage' && err.kind !== 'config')) return err;
  // The reference parser's errors carry the text they refused; a CLI flag error carries none.
  const reference = err.reason === 'reference';
  if (err.field !== undefined && !reference) return err;
  let field: string | undefined;
  for (const f of REFERENCE_FIELDS) {
    const value = cfg[f];
    if (value !== undefined && err.path !== undefined && (err.path === value || err.path.startsWith(`${value}/`))) field = f;
  }
  // A release image's own component pullspec is not in the config; only the configured one is.
  if (!field && reference) {
    const text = (err.facts as { reference?: unknown }).reference;
    field = text === cfg.image ? 'image' : text === cfg.releaseImage ? 'releaseImage' : undefined;
  }
  if (!field) return err;
  return new PivotError('config', `${field}: ${err.message}`, {
    field,
    ...(err.path !== undefined ? { path: err.path } : {}),
    fix: `correct ${field} in ${source}`,
    facts: err.facts,
    cause: err,
  });
}
