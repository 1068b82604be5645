// src/systemd/notify.ts against the real systemd-notify(1), received on a real AF_UNIX datagram
// socket (Node has none; Debian's python3 listens), the way PID 1 receives it.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { notifyArgs, notifyStatus, sdNotify } from '../../src/systemd/notify.ts';

const RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
with open(sys.argv[2], 'a') as out:
    print('ready', flush=True)
    while True:
        msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = int.from_bytes(anc[0][2][0:4], 'little') if anc else -1
        out.write(repr((pid, msg.decode())) + '\\n')
        out.flush()
`;

let dir: string;
let receiver: ChildProcess;
let socketPath: string;
let received: string;

async function messages(count: number): Promise<Array<[number, string]>> {
  for (let i = 0; i < 100; i++) {
    // systemd-notify follows each message with a BARRIER=1 (sd_notify_barrier): not ours, skip it.
    const lines = existsSync(received)
      ? readFileSync(received, 'utf8').trim().split('\n').filter((l) => l && !l.endsWith(", 'BARRIER=1')"))
      : [];
    if (lines.length >= count) {
      return lines.map((l) => {
        const m = /^\((-?\d+), '(.*)'\)$/s.exec(l)!;
        return [Number(m[1]), m[2]!.replace(/\\n/g, '\n')];
      });
    }
    await sleep(20);
  }
  throw new Error(`expected ${count} notify messages`);
}

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'nip-notify-'));
  socketPath = join(dir, 'notify.sock');
  received = join(dir, 'received.txt');
  receiver = spawn('/usr/bin/python3', ['-c', RECEIVER, socketPath, received], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve) => receiver.stdout!.once('data', () => resolve()));
});

afterEach(() => {
  receiver.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('sd_notify via systemd-notify', () => {
  it('sends STATUS= lines attributed to the agent process itself', async () => {
    const env = { ...process.env, NOTIFY_SOCKET: socketPath };
    expect(await notifyStatus('pull: layer 1/3', { env })).toBe(true);
    expect(await notifyStatus('done: pivoted', { env })).toBe(true);
    expect(await messages(2)).toEqual([[process.pid, 'STATUS=pull: layer 1/3'], [process.pid, 'STATUS=done: pivoted']]);
  });

  it('keeps a newline in the status from smuggling in another field', async () => {
    const env = { ...process.env, NOTIFY_SOCKET: socketPath };
    expect(await notifyStatus('bad\nREADY=1', { env })).toBe(true);
    const [[, msg]] = (await messages(1)) as [[number, string]];
    expect(msg).toBe('STATUS=bad READY=1');
    expect(notifyArgs({ STATUS: 'a\r\nb' })).toEqual(['STATUS=a b']);
  });

  it('is a no-op without NOTIFY_SOCKET and never throws when systemd-notify fails', async () => {
    const env = { ...process.env };
    delete env.NOTIFY_SOCKET;
    expect(await sdNotify({ STATUS: 'x' }, { env })).toBe(false);
    expect(await sdNotify({ STATUS: 'x' }, { env: { NOTIFY_SOCKET: join(dir, 'absent.sock') } })).toBe(false);
    expect(await sdNotify({ STATUS: 'x' }, { env: { NOTIFY_SOCKET: socketPath }, command: '/nonexistent/systemd-notify' })).toBe(false);
    // Positive control instead of a wait: a working send to the same socket arrives, alone.
    expect(await sdNotify({ STATUS: 'control' }, { env: { ...process.env, NOTIFY_SOCKET: socketPath } })).toBe(true);
    expect(await messages(1)).toEqual([[process.pid, 'STATUS=control']]);
  });
});
