import { describe, expect, it } from 'vitest';
import { createLogger, journaldPriority, redact, redactText } from '../src/log.ts';

function capture(): { lines: string[]; logger: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  const logger = createLogger({ sink: (l) => lines.push(l), pretty: false, level: 'debug' });
  return { lines, logger };
}

describe('log', () => {
  it('prefixes every JSON line with its journald priority', () => {
    const { lines, logger } = capture();
    logger.debug('d');
    logger.info('i');
    logger.warn('w');
    logger.error('e');
    logger.fatal('f');
    expect(lines.map((l) => l.slice(0, 3))).toEqual(['<7>', '<6>', '<4>', '<3>', '<2>']);
    const parsed = JSON.parse(lines[1]!.slice(3));
    expect(parsed.msg).toBe('i');
    expect(parsed.app).toBe('node-image-pivot');
    expect(journaldPriority(35)).toBe(6);
  });

  it('never writes credentials, by key or by shape', () => {
    const { lines, logger } = capture();
    const auth = Buffer.from('kubeadmin:s3cr3t-pass').toString('base64');
    logger.info({
      registry: 'quay.io',
      password: 's3cr3t-pass',
      nested: { deep: { Authorization: 'Bearer abc.def.ghi', identitytoken: 'tok-123' } },
      auths: { 'quay.io': { auth } },
      headers: ['Authorization: Basic ' + auth],
      url: 'https://kubeadmin:s3cr3t-pass@quay.io/v2/',
    }, 'login to https://user:s3cr3t-pass@host/ with Bearer zzz-token');
    const out = lines.join('');
    for (const secret of ['s3cr3t-pass', 'abc.def.ghi', 'tok-123', auth, 'zzz-token']) expect(out).not.toContain(secret);
    expect(out).toContain('quay.io');
    expect(out).toContain('[REDACTED]');
  });

  it('redacts errors and keeps their message shape', () => {
    const e = Object.assign(new Error('401 for Bearer qqq'), { token: 'ttt' });
    const r = redact({ err: e }) as { err: { message: string; token: string } };
    expect(r.err.message).toBe('401 for Bearer [REDACTED]');
    expect(r.err.token).toBe('[REDACTED]');
    expect(redactText('{"auth":"dXNlcjpwYXNz"}')).toBe('{"auth":"[REDACTED]"}');
  });

  it('keeps where credentials live, and harmless non-string values', () => {
    expect(redact({ authfile: '/run/containers/0/auth.json', tokens: 0, insecure: false, authToken: 'x' })).toEqual({
      authfile: '/run/containers/0/auth.json', tokens: 0, insecure: false, authToken: '[REDACTED]',
    });
  });
});
