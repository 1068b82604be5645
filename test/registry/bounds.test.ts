// The pure parts of issue 17's bounds: list caps, the retry classification of permanent answers,
// the throughput rule (with a fake clock), the body caps, the pull deadline, the layer cap and
// the EAGAIN-proof log writer. The hostile servers are in test/faults/hostile-registry.test.ts.
import type { writeSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { listSome, PivotError } from '../../src/errors.ts';
import { writeAllSync } from '../../src/log.ts';
import { budgetTimerDelayMs, guardedChunks, isDeadline, MAX_LAYERS, MIN_BYTES_PER_SECOND, PullBudget, readCapped } from '../../src/registry/bounds.ts';
import { parseManifest } from '../../src/registry/manifest.ts';
import { DEFAULT_TIMEOUTS } from '../../src/config.ts';
import { isPermanentCode, isRetryableError, networkError } from '../../src/registry/transport.ts';
import { thrown } from '../helpers/thrown.ts';

const guard = { host: 'reg.example:5000', what: 'manifest ns/app:v1', timeouts: { ...DEFAULT_TIMEOUTS, readSeconds: 10 } };

async function rejected(fn: () => Promise<unknown>): Promise<PivotError> {
  const err = await fn().then(() => undefined, (e: unknown) => e);
  if (err instanceof PivotError) return err;
  throw new Error(`expected a PivotError, got ${String(err)}`);
}

async function* chunks(sizes: number[]): AsyncGenerator<Buffer> {
  for (const n of sizes) yield Buffer.alloc(n);
}

describe('listSome', () => {
  it('names the first ten and counts the rest with thousands separators', () => {
    const l = listSome(Array.from({ length: 10_000 }, (_, i) => `p${i}`));
    expect(l.shown).toHaveLength(10);
    expect(l.total).toBe(10_000);
    expect(l.text).toBe('p0, p1, p2, p3, p4, p5, p6, p7, p8, p9 and 9,990 more');
  });
  it('lists short lists whole and cuts absurdly long items', () => {
    expect(listSome(['a', 'b']).text).toBe('a, b');
    expect(listSome(['x'.repeat(5000)]).shown[0]!.length).toBeLessThan(110);
  });
});

describe('permanent answers are not retried', () => {
  it.each(['UND_ERR_INVALID_ARG', 'UND_ERR_HEADERS_OVERFLOW', 'HPE_INVALID_STATUS', 'ERR_INVALID_URL'])('%s is permanent', (code) => {
    expect(isPermanentCode(code)).toBe(true);
    const e = networkError(Object.assign(new Error('x'), { code }), 'h:1', 'manifest m');
    expect(e.permanent).toBe(true);
    expect(isRetryableError(e)).toBe(false);
    expect(isRetryableError(Object.assign(new Error('x'), { code }))).toBe(false);
  });
  it.each(['ECONNRESET', 'UND_ERR_SOCKET', 'UND_ERR_BODY_TIMEOUT'])('%s is retried', (code) => {
    expect(isRetryableError(networkError(Object.assign(new Error('x'), { code }), 'h:1', 'blob b'))).toBe(true);
  });
  it('a response that is not HTTP (HTTPParserError without a code) is permanent', () => {
    const err = Object.assign(new Error('Response does not match the HTTP/1.1 protocol'), { name: 'HTTPParserError' });
    expect(networkError(err, 'h:1', 'manifest m').permanent).toBe(true);
  });
  it('a body timeout names the host and timeouts.readSeconds', () => {
    const e = networkError(Object.assign(new Error('Body Timeout Error'), { code: 'UND_ERR_BODY_TIMEOUT' }), 'h:1', 'manifest m', false, guard.timeouts);
    expect(e.exitCode).toBe(3);
    expect(e.facts.limit).toBe('timeouts.readSeconds');
    expect(e.message).toContain('no data from h:1 for 10 s');
  });
});

describe('the minimum-throughput rule', () => {
  it('a trickle under the floor over a read window is a retryable stall naming the host', async () => {
    let t = 0;
    const clock = (): number => t;
    const seen: number[] = [];
    const err = await rejected(async () => {
      for await (const c of guardedChunks((async function* () {
        for (let i = 0; i < 30; i++) { t += 1000; yield Buffer.alloc(1); }
      })(), guard, clock)) seen.push(c.length);
    });
    expect(err).toBeInstanceOf(PivotError);
    const e = err as PivotError;
    expect(e.facts.code).toBe('SLOW_TRANSFER');
    expect(e.message).toContain('reg.example:5000');
    expect(isRetryableError(e)).toBe(true);
    expect(seen.length).toBeLessThan(12);
  });
  it('a transfer at the floor passes', async () => {
    let t = 0;
    let n = 0;
    for await (const c of guardedChunks((async function* () {
      for (let i = 0; i < 50; i++) { t += 1000; yield Buffer.alloc(MIN_BYTES_PER_SECOND); }
    })(), guard, () => t)) n += c.length;
    expect(n).toBe(50 * MIN_BYTES_PER_SECOND);
  });
});

describe('body caps', () => {
  it('refuses a declared Content-Length over the cap before reading', async () => {
    let destroyed = false;
    const body = Object.assign(chunks([10]), { destroy: () => { destroyed = true; } });
    const e = await rejected(() => readCapped(body, 100, guard, '101'));
    expect(e.exitCode).toBe(3);
    expect(e.facts.host).toBe('reg.example:5000');
    expect(destroyed).toBe(true);
  });
  it('stops an undeclared body at the cap', async () => {
    const e = await rejected(() => readCapped(chunks([60, 60, 60]), 100, guard));
    expect(e.message).toBe('manifest ns/app:v1 from reg.example:5000 is larger than the 100-byte limit');
    expect(await readCapped(chunks([50, 50]), 100, guard)).toHaveLength(100);
  });
});

describe('PullBudget', () => {
  it('is a deadline error: exit 3, not retried, naming host and limit', () => {
    const b = new PullBudget(5, 0);
    expect(b.expired(4999)).toBe(false);
    expect(b.expired(5000)).toBe(true);
    const e = b.error('reg:1', 'blob sha256:x');
    expect(e.exitCode).toBe(3);
    expect(isRetryableError(e)).toBe(false);
    expect(isDeadline(e)).toBe(true);
    expect(e.message).toContain('5 s (timeouts.pullSeconds)');
    b.close();
  });
  it('a budget longer than setTimeout can count (~24.8 days) is capped, not fired at once', () => {
    // Node runs a timer whose delay overflows 2^31-1 ms after 1 ms instead.
    expect(budgetTimerDelayMs(30 * 24 * 3600)).toBe(2 ** 31 - 1);
    expect(budgetTimerDelayMs(5)).toBe(5000);
    const b = new PullBudget(30 * 24 * 3600);
    expect(b.signal.aborted).toBe(false);
    b.close();
  });
});

describe('layer cap', () => {
  const layer = { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: `sha256:${'1'.repeat(64)}`, size: 1 };
  const manifest = (n: number): Buffer => Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { ...layer, mediaType: 'application/vnd.oci.image.config.v1+json' },
    layers: Array.from({ length: n }, () => layer),
  }));
  it(`accepts ${MAX_LAYERS} layers and refuses one more (exit 3, permanent)`, () => {
    expect(parseManifest(manifest(MAX_LAYERS), undefined, 'm').kind).toBe('image');
    const e = thrown(() => parseManifest(manifest(MAX_LAYERS + 1), undefined, 'm'));
    expect(e.exitCode).toBe(3);
    expect(e.permanent).toBe(true);
  });
});

describe('writeAllSync', () => {
  it('waits out EAGAIN and writes every byte in order', () => {
    const out: Buffer[] = [];
    let calls = 0;
    const write = ((_fd: number, buf: Buffer, off: number): number => {
      calls++;
      if (calls % 2 === 1) throw Object.assign(new Error('EAGAIN'), { code: 'EAGAIN' });
      const n = Math.min(7, buf.length - off);
      out.push(Buffer.from(buf.subarray(off, off + n)));
      return n;
    }) as unknown as typeof writeSync;
    writeAllSync(2, 'hello, journal\n', write);
    expect(Buffer.concat(out).toString()).toBe('hello, journal\n');
  });
});
