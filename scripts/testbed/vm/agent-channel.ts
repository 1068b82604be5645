// The host end of the guest agent's line protocol (see guest/nip-vm-agent) over qemu's
// virtio-serial chardev socket. Requests written before the guest opens its port wait in the
// socket (qemu reads nothing from it until then), so nothing is lost while the guest boots.
import { connect, type Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

export interface AgentReply {
  exitCode: number;
  stdout: string;
  stderr: string;
}

interface Pending {
  resolve: (r: AgentReply) => void;
  reject: (e: Error) => void;
}

const enc = (s: string) => (s.length ? Buffer.from(s).toString('base64') : '-');
const dec = (s: string | undefined) => (!s || s === '-' ? '' : Buffer.from(s, 'base64').toString('utf8'));

export class AgentChannel {
  private socket: Socket | undefined;
  private buffer = '';
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  private closed = false;

  /** Connects to qemu's chardev socket, waiting for qemu to create it (while `alive()`). */
  async connect(path: string, alive: () => boolean, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let socket: Socket | undefined;
    // The socket file appears at bind(), a moment before qemu listens: retry a refused connect.
    while (!socket) {
      if (!alive()) throw new Error('qemu exited before its agent socket accepted a connection');
      if (Date.now() > deadline) throw new Error(`qemu's agent socket ${path} accepted no connection within ${timeoutMs} ms`);
      if (existsSync(path)) socket = await tryConnect(path);
      if (!socket) await sleep(50);
    }
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    socket.on('error', () => this.failAll(new Error('agent channel error')));
    socket.on('close', () => this.failAll(new Error('agent channel closed (qemu exited)')));
    this.socket = socket;
  }

  private onData(chunk: string): void {
    this.buffer += chunk;
    for (let nl = this.buffer.indexOf('\n'); nl >= 0; nl = this.buffer.indexOf('\n')) {
      const line = this.buffer.slice(0, nl);
      this.buffer = this.buffer.slice(nl + 1);
      const [kind, id, code, out, err] = line.split(' ');
      if (kind !== 'RES') continue;
      const p = this.pending.get(Number(id));
      if (!p) continue; // a reply to a request given up on (timeout)
      this.pending.delete(Number(id));
      p.resolve({ exitCode: Number(code), stdout: dec(out), stderr: dec(err) });
    }
  }

  private failAll(err: Error): void {
    this.closed = true;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  /** Runs a bash script in the guest; rejects on timeout or when qemu goes away. */
  async run(script: string, opts: { input?: string; timeoutMs: number }): Promise<AgentReply> {
    if (!this.socket || this.closed) throw new Error('agent channel is not connected');
    const id = this.nextId++;
    const reply = new Promise<AgentReply>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.socket.write(`REQ ${id} ${enc(script)} ${enc(opts.input ?? '')}\n`);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`guest agent did not answer within ${opts.timeoutMs} ms`));
      }, opts.timeoutMs);
    });
    try {
      return await Promise.race([reply, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  close(): void {
    this.closed = true;
    this.socket?.destroy();
  }
}

async function tryConnect(path: string): Promise<Socket | undefined> {
  const socket = connect(path);
  return new Promise((resolve) => {
    socket.once('connect', () => resolve(socket));
    socket.once('error', () => {
      socket.destroy();
      resolve(undefined);
    });
  });
}

/** Quotes argv for bash. */
export function shellQuote(argv: readonly string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}
