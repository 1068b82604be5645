// A fault-injecting HTTP proxy of our own, a real server on 127.0.0.1 in front of a real
// registry (test/helpers/registry.ts). Each request is matched against the rules in order; the
// first rule that matches and has uses left decides what the client sees:
//
//   reset      headers and the first N body bytes, then a TCP RST
//   status     an immediate 500/503/429 (with Retry-After when given)
//   stall      upstream's headers, then silence until the client gives up
//   truncate   N body bytes then a clean FIN, with the upstream Content-Length ('correct') or a
//              Content-Length of N ('wrong': the response looks complete but is short)
//   flip       every byte forwarded, byte N XOR 0xff (a digest mismatch)
//   expire     401 with the upstream challenge for every Authorization seen so far (a token
//              that expired mid-pull); fresh tokens pass
//   throttle   the body paced to N bytes per second (a slow link)
//
//   const proxy = await startFaultProxy(reg.url);
//   proxy.rules = [{ match: /\/blobs\//, fault: { kind: 'reset', afterBytes: 1000 }, times: 1 }];
//   proxy.host  127.0.0.1:PORT; proxy.seen: every request with what was done to it
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type Fault =
  | { kind: 'reset'; afterBytes: number }
  | { kind: 'status'; status: number; retryAfter?: string }
  | { kind: 'stall' }
  | { kind: 'truncate'; afterBytes: number; contentLength: 'correct' | 'wrong' }
  | { kind: 'flip'; atByte: number }
  | { kind: 'expire' }
  | { kind: 'throttle'; bytesPerSecond: number };

export interface FaultRule {
  /** Matched against "METHOD /path?query". */
  match: RegExp;
  fault: Fault;
  /** Uses left; undefined means every matching request. */
  times?: number;
  /** Let this many matching requests through untouched first. */
  skip?: number;
}

export interface SeenRequest {
  method: string;
  path: string;
  range: string | undefined;
  authorization: string | undefined;
  /** The fault applied, or 'pass'. */
  action: string;
  status: number;
  /** Body bytes sent to the client. */
  bytes: number;
}

export interface FaultProxy {
  host: string;
  url: string;
  rules: FaultRule[];
  seen: SeenRequest[];
  /** Forgets rules, requests seen and expired credentials. */
  reset(): void;
  stop(): Promise<void>;
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'proxy-connection', 'upgrade', 'te', 'trailer']);

function pickRule(rules: FaultRule[], line: string): FaultRule | undefined {
  for (const r of rules) {
    if (!r.match.test(line)) continue;
    if (r.skip !== undefined && r.skip > 0) {
      r.skip--;
      continue;
    }
    if (r.times !== undefined) {
      if (r.times <= 0) continue;
      r.times--;
    }
    return r;
  }
  return undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const up = new URL(upstream);
  const sockets = new Set<Socket>();
  const expired = new Set<string>();
  let stopping = false;
  const proxy: FaultProxy = {
    host: '', url: '', rules: [], seen: [],
    reset() { this.rules = []; this.seen.length = 0; expired.clear(); },
    stop: async () => undefined,
  };

  const forward = (req: IncomingMessage, dropAuth: boolean): Promise<IncomingMessage> => new Promise((resolve, reject) => {
    const headers = { ...req.headers, host: up.host };
    if (dropAuth) delete headers.authorization;
    const out = httpRequest({ host: up.hostname, port: up.port, method: req.method, path: req.url, headers }, resolve);
    out.on('error', reject);
    req.pipe(out);
  });

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const line = `${req.method} ${req.url}`;
    const auth = req.headers.authorization;
    const record: SeenRequest = {
      method: req.method ?? 'GET', path: req.url ?? '/', range: req.headers.range, authorization: auth,
      action: 'pass', status: 0, bytes: 0,
    };
    proxy.seen.push(record);
    let rule = pickRule(proxy.rules, line);
    // An expired credential stays expired for every later request, not just for one rule hit.
    if (!rule && auth !== undefined && expired.has(auth)) rule = { match: /./, fault: { kind: 'expire' } };
    const fault = rule?.fault;
    record.action = fault?.kind ?? 'pass';

    if (fault?.kind === 'status') {
      record.status = fault.status;
      res.writeHead(fault.status, { 'content-type': 'application/json', ...(fault.retryAfter ? { 'retry-after': fault.retryAfter } : {}) });
      res.end(JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `injected ${fault.status}` }] }));
      return;
    }
    if (fault?.kind === 'expire') {
      if (auth === undefined || !expired.has(auth)) {
        // The rule marks the moment of expiry: every credential used so far is now stale.
        for (const s of proxy.seen) if (s.authorization) expired.add(s.authorization);
      }
      if (auth !== undefined && expired.has(auth)) {
        const challenge = await forward(req, true);
        challenge.resume();
        record.status = 401;
        res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': String(challenge.headers['www-authenticate'] ?? '') });
        res.end(JSON.stringify({ errors: [{ code: 'UNAUTHORIZED', message: 'token expired (injected)' }] }));
        return;
      }
    }

    const upRes = await forward(req, false);
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(upRes.headers)) if (v !== undefined && !HOP_BY_HOP.has(k)) headers[k] = v;
    const status = upRes.statusCode ?? 502;
    record.status = status;
    const hasBody = req.method !== 'HEAD' && status !== 204 && status !== 304;
    if (fault?.kind === 'truncate' && fault.contentLength === 'wrong' && hasBody) headers['content-length'] = String(fault.afterBytes);
    res.writeHead(status, headers);
    res.flushHeaders();

    if (fault?.kind === 'stall') {
      // Headers are out; the body never comes. The client's read timeout must fire.
      upRes.destroy();
      return;
    }
    let sent = 0;
    const write = (chunk: Buffer): Promise<void> => new Promise((r) => {
      sent += chunk.length;
      record.bytes = sent;
      if (!res.write(chunk)) res.once('drain', r);
      else r();
    });
    for await (const raw of upRes) {
      let chunk = raw as Buffer;
      if (res.destroyed) break;
      if (fault?.kind === 'reset' || fault?.kind === 'truncate') {
        const left = fault.afterBytes - sent;
        if (chunk.length >= left) {
          await write(chunk.subarray(0, left));
          upRes.destroy();
          if (fault.kind === 'reset') {
            // Give the kernel a moment to send the bytes before the RST discards the queue.
            await sleep(20);
            res.socket?.resetAndDestroy();
          } else if (fault.contentLength === 'wrong') {
            res.end();
          } else {
            res.socket?.end();
          }
          return;
        }
      }
      if (fault?.kind === 'flip' && fault.atByte >= sent && fault.atByte < sent + chunk.length) {
        chunk = Buffer.from(chunk);
        chunk[fault.atByte - sent] = (chunk[fault.atByte - sent] as number) ^ 0xff;
      }
      if (fault?.kind === 'throttle') {
        for (let i = 0; i < chunk.length; i += 4096) {
          const piece = chunk.subarray(i, i + 4096);
          await write(piece);
          await sleep((piece.length / fault.bytesPerSecond) * 1000);
        }
        continue;
      }
      await write(chunk);
    }
    res.end();
  };

  const server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent && !res.destroyed) {
        res.writeHead(502);
        res.end();
      } else {
        res.destroy();
      }
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    if (stopping) s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  proxy.host = `127.0.0.1:${port}`;
  proxy.url = `http://${proxy.host}`;
  proxy.stop = () => new Promise<void>((r) => {
    stopping = true;
    for (const s of sockets) s.destroy();
    server.close(() => r());
  });
  return proxy;
}
