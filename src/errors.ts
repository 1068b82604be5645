// Every failure the agent can report is one of these. Each carries what went wrong, where
// (a path, a config field, a registry, a unit) and what the operator should do about it, so that
// `journalctl -u node-image-pivot` shows one line that is enough to act on.
//
// Only cli.ts turns these into exit codes. The pivot's steps throw; they never call process.exit.

/** Documented in README.md ("Exit codes"). Keep the two in step. */
export const ExitCode = {
  ok: 0,
  internal: 1,
  usage: 2,
  registry: 3,
  verification: 4,
  unpack: 5,
  mount: 6,
  etcMerge: 7,
  systemd: 8,
  preflight: 9,
  interrupted: 10,
  busy: 11,
  selinux: 12,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export type ErrorKind =
  | 'usage'
  | 'config'
  | 'registry'
  | 'auth'
  | 'network'
  | 'verification'
  | 'unpack'
  | 'path-safety'
  | 'limit'
  | 'mount'
  | 'etc-merge'
  | 'etc-conflict'
  | 'systemd'
  | 'preflight'
  | 'interrupted'
  | 'busy'
  | 'selinux'
  | 'internal';

const exitCodeByKind: Record<ErrorKind, ExitCode> = {
  usage: ExitCode.usage,
  config: ExitCode.usage,
  registry: ExitCode.registry,
  auth: ExitCode.registry,
  network: ExitCode.registry,
  verification: ExitCode.verification,
  unpack: ExitCode.unpack,
  'path-safety': ExitCode.unpack,
  limit: ExitCode.unpack,
  mount: ExitCode.mount,
  'etc-merge': ExitCode.etcMerge,
  'etc-conflict': ExitCode.etcMerge,
  systemd: ExitCode.systemd,
  preflight: ExitCode.preflight,
  interrupted: ExitCode.interrupted,
  busy: ExitCode.busy,
  selinux: ExitCode.selinux,
  internal: ExitCode.internal,
};

/**
 * `status` reports the last run's result with codes of its own, apart from run's, so that a
 * script can tell "status says the pivot failed" from "status itself failed with a usage error".
 */
export const StatusExitCode = {
  /** Done, skipped, or not run this boot. */
  ok: 0,
  failed: 20,
  running: 21,
} as const;

/**
 * The exit codes systemd does not retry: the units' RestartPreventExitStatus= lists exactly
 * these (a test checks), so the one-line cause stays at the end of the journal. Everything else
 * is retried by Restart=, with the agent's own backoff (src/pivot.ts retryDelaySeconds).
 */
export const NOT_RETRIED_EXIT_CODES: readonly ExitCode[] = [ExitCode.usage, ExitCode.verification, ExitCode.etcMerge];

/**
 * Permanent failures would fail the same way if the same operation were repeated at once; code
 * that keeps partial work for a retry (a resumable download) drops it after one of these.
 */
const permanentKinds: ReadonlySet<ErrorKind> = new Set<ErrorKind>([
  'usage',
  'config',
  'verification',
  'path-safety',
  'limit',
  'etc-conflict',
]);

/**
 * What code may branch on besides the kind (and an errno code or a D-Bus error name). `facts`
 * are data for the state file and the log, never a control flag.
 */
export type ErrorReason =
  /** timeouts.pullSeconds is spent: no other source or attempt helps, yet a rerun may resume. */
  | 'pull-deadline'
  /** The image index lists no manifest for the wanted platform: no other source helps. */
  | 'no-platform'
  /** The connection broke or stalled after the request was answered: another attempt resumes. */
  | 'transfer'
  /** The reference parser refused a text (facts.reference holds it). */
  | 'reference'
  /** The registry's TLS certificate was refused: the same connection gets the same verdict. */
  | 'tls-certificate';

export interface PivotErrorDetails {
  /** The filesystem path at fault, when there is one. */
  path?: string;
  /** The config or manifest field at fault, e.g. `registries[0].location`. */
  field?: string;
  /** What the operator should do. Always phrased as an instruction. */
  fix: string;
  /** Extra structured facts for --json and the state file. Never secrets. */
  facts?: Record<string, unknown>;
  cause?: unknown;
  /** Overrides the kind's default exit code (rarely needed). */
  exitCode?: ExitCode;
  /** Overrides the kind's default retry classification. */
  permanent?: boolean;
  reason?: ErrorReason;
  /** The D-Bus error name, for errors from a D-Bus call (org.freedesktop.systemd1.NoSuchUnit). */
  dbusName?: string;
}

export class PivotError extends Error {
  readonly kind: ErrorKind;
  readonly path: string | undefined;
  readonly field: string | undefined;
  readonly fix: string;
  readonly facts: Record<string, unknown>;
  readonly exitCode: ExitCode;
  readonly permanent: boolean;
  readonly reason: ErrorReason | undefined;
  readonly dbusName: string | undefined;

  constructor(kind: ErrorKind, message: string, details: PivotErrorDetails) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = 'PivotError';
    this.kind = kind;
    this.path = details.path;
    this.field = details.field;
    this.fix = details.fix;
    this.facts = details.facts ?? {};
    this.exitCode = details.exitCode ?? exitCodeByKind[kind];
    this.permanent = details.permanent ?? permanentKinds.has(kind);
    this.reason = details.reason;
    this.dbusName = details.dbusName;
  }

  /** The one line an operator reads: cause, location, fix. No newlines, ever. */
  oneLine(): string {
    const where = [this.field && `field ${this.field}`, this.path && `path ${JSON.stringify(this.path)}`]
      .filter(Boolean)
      .join(', ');
    const line = `${this.kind}: ${this.message}${where ? ` (${where})` : ''}. Fix: ${this.fix}`;
    return singleLine(line);
  }

  toJSON(): Record<string, unknown> {
    return {
      kind: this.kind,
      message: this.message,
      path: this.path,
      field: this.field,
      fix: this.fix,
      exitCode: this.exitCode,
      permanent: this.permanent,
      ...(Object.keys(this.facts).length ? { facts: this.facts } : {}),
    };
  }
}

/** How many items an error message, fix or facts list before "and N more". */
export const LIST_LIMIT = 10;

/** Pure: the first `limit` items joined, and how many were left out ("a, b and 9,990 more"). */
export function listSome(items: readonly string[], limit = LIST_LIMIT): { text: string; shown: string[]; total: number } {
  const shown = items.slice(0, limit).map((s) => (s.length > 100 ? `${s.slice(0, 100)}...` : s));
  const rest = items.length - shown.length;
  const text = rest > 0 ? `${shown.join(', ')} and ${rest.toLocaleString('en-US')} more` : shown.join(', ');
  return { text, shown, total: items.length };
}

export function singleLine(text: string): string {
  return text.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

/** Wraps anything thrown into a PivotError, keeping PivotErrors as they are. */
export function asPivotError(err: unknown, fallbackFix = 'report this as a bug with the journal attached'): PivotError {
  if (err instanceof PivotError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const path = (err as NodeJS.ErrnoException | undefined)?.path;
  return new PivotError('internal', code ? `${code}: ${message}` : message, {
    fix: fallbackFix,
    ...(path ? { path } : {}),
    cause: err,
  });
}

export function isErrno(err: unknown, ...codes: string[]): err is NodeJS.ErrnoException {
  return err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string'
    && codes.includes((err as NodeJS.ErrnoException).code as string);
}
