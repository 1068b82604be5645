// The one retry policy of manifests and blobs (src/registry/transport.ts): which failures get
// another attempt, and how long the wait before it is.
import { describe, expect, it } from 'vitest';
import { PullBudget } from '../../src/registry/bounds.ts';
import { DEFAULT_BACKOFF, TransientFailure, isRetryableError, networkError, retryWaitMs } from '../../src/registry/transport.ts';

const raw = (code: string): Error => Object.assign(new Error(`raw ${code}`), { code });

describe('isRetryableError', () => {
  it.each([
    ['DNS', 'ENOTFOUND', 'dns', undefined],
    ['connect', 'ECONNREFUSED', 'connect', undefined],
    ['TLS handshake', 'EPROTO', 'tls', undefined],
    ['reset', 'ECONNRESET', 'transfer', 'transfer'],
    ['read stall', 'UND_ERR_BODY_TIMEOUT', 'transfer', 'transfer'],
  ])('retries %s (%s) as a network error of stage %s', (_name, code, stage, reason) => {
    const e = networkError(raw(code), 'reg.example', 'manifest x');
    expect(e).toMatchObject({ kind: 'network', facts: { stage, code }, reason });
    expect(isRetryableError(e)).toBe(true);
    expect(isRetryableError(raw(code))).toBe(['ECONNRESET', 'ECONNREFUSED', 'UND_ERR_BODY_TIMEOUT'].includes(code));
  });

  it('retries transient answers (408, 429, 5xx) and short bodies', () => {
    expect(isRetryableError(new TransientFailure('HTTP 503'))).toBe(true);
    expect(isRetryableError(new TransientFailure('connection closed at byte 10 of 20'))).toBe(true);
  });

  it('does not retry a refused certificate, a permanent answer, the pull deadline, or other kinds', () => {
    const cert = networkError(raw('UNABLE_TO_VERIFY_LEAF_SIGNATURE'), 'reg.example', 'manifest x', true);
    expect(cert).toMatchObject({ facts: { stage: 'tls' }, reason: 'tls-certificate', permanent: false });
    expect(isRetryableError(cert)).toBe(false);
    expect(isRetryableError(networkError(raw('UND_ERR_INVALID_ARG'), 'reg.example', 'manifest x'))).toBe(false);
    const budget = new PullBudget(1);
    try {
      expect(isRetryableError(budget.error('reg.example', 'blob x'))).toBe(false);
    } finally {
      budget.close();
    }
    expect(isRetryableError(new Error('plain'))).toBe(false);
  });
});

describe('retryWaitMs', () => {
  it('takes Retry-After when the answer gave one, else full-jitter backoff, capped', () => {
    expect(retryWaitMs(new TransientFailure('HTTP 429', 2000), 0)).toBe(2000);
    for (let attempt = 0; attempt < 8; attempt++) {
      const cap = Math.min(DEFAULT_BACKOFF.maxMs, DEFAULT_BACKOFF.baseMs * 2 ** attempt);
      const w = retryWaitMs(new TransientFailure('HTTP 503'), attempt);
      expect(w).toBeGreaterThanOrEqual(0);
      expect(w).toBeLessThan(cap);
    }
  });
});
