// Peak memory of unpacking one large generated layer, by size, in a fresh child process each
// (VmHWM from /proc/self/status). Memory must not grow with layer size.
//
//   node scripts/bench/unpack-memory.ts [MiB...]      default: 300 1024
// Needs about 2x the largest size free in $TMPDIR. Prints one JSON line per size.
import { spawnSync } from 'node:child_process';
import { createReadStream, createWriteStream, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';

const MiB = 1024 * 1024;

function header(name: string, size: number): Buffer {
  const b = Buffer.alloc(512);
  b.write(name, 0, 100, 'latin1');
  b.write('0000644\0', 100, 'latin1');
  b.write('0000000\0', 108, 'latin1');
  b.write('0000000\0', 116, 'latin1');
  b.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 'latin1');
  b.write(`${(1_700_000_000).toString(8).padStart(11, '0')}\0`, 136, 'latin1');
  b.write('0', 156, 'latin1');
  b.write('ustar\0' + '00', 257, 'latin1');
  b.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of b) sum += x;
  b.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return b;
}

/** A tar of `mib` MiB: one 256 MiB file (or smaller) plus 256 KiB files, mildly compressible. */
function* layerTar(mib: number): Generator<Buffer> {
  let seed = 1;
  const chunk = (n: number): Buffer => {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) { seed = (seed * 1103515245 + 12345) >>> 0; b.writeUInt32LE(seed & 0x0f0f0f0f, i); }
    return b;
  };
  const block = chunk(MiB);
  let left = mib * MiB;
  const big = Math.min(256 * MiB, Math.floor(left / 2));
  yield header('big', big);
  for (let i = 0; i < big / MiB; i++) yield block;
  left -= big;
  for (let n = 0; left > 0; n++) {
    const size = Math.min(256 * 1024, left);
    yield header(`d${n % 64}/f${n}`, size);
    yield block.subarray(n % 512, (n % 512) + size);
    yield Buffer.alloc((512 - (size % 512)) % 512);
    left -= size;
  }
  yield Buffer.alloc(1024);
}

async function child(file: string, dest: string): Promise<void> {
  const { unpackLayers } = await import('../../src/unpack/index.ts');
  const { configSchema } = await import('../../src/config.ts');
  const limits = configSchema.parse({ image: 'x' }).limits;
  const s = await unpackLayers(dest, [{
    digest: 'sha256:bench', mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', size: statSync(file).size,
    open: async () => createReadStream(file, { highWaterMark: 256 * 1024 }),
  }], { limits, allowDevices: false, keepSysroot: true });
  const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  process.stdout.write(`${JSON.stringify({ vmHwmKiB: Number(hwm), ...s })}\n`);
}

async function main(): Promise<void> {
  if (process.argv[2] === '--child') return child(process.argv[3]!, process.argv[4]!);
  const sizes = process.argv.slice(2).map(Number);
  for (const mib of sizes.length ? sizes : [300, 1024]) {
    const dir = mkdtempSync(join(tmpdir(), 'nip-bench-'));
    try {
      const file = join(dir, 'layer.tar.gz');
      await pipeline(Readable.from(layerTar(mib)), zlib.createGzip({ level: 1 }), createWriteStream(file));
      const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child', file, join(dir, 'dest')], { encoding: 'utf8', env: { ...process.env, NODE_IMAGE_PIVOT_LOG_LEVEL: 'warn' } });
      if (r.status !== 0) throw new Error(`child failed: ${r.stderr}`);
      const out = JSON.parse(r.stdout) as { vmHwmKiB: number; expandedBytes: number; compressedBytes: number; files: number; seconds: number };
      process.stdout.write(`${JSON.stringify({ layerMiB: mib, peakRssMiB: +(out.vmHwmKiB / 1024).toFixed(1), expandedBytes: out.expandedBytes, compressedBytes: out.compressedBytes, files: out.files, seconds: +out.seconds.toFixed(2) })}\n`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
}

await main();
