// Extended attributes through @napi-rs/xattr (l*xattr: symlinks themselves, binary values).
// Inside the single executable `require` only reaches built-ins, so the addon travels as a SEA
// asset and is loaded with process.dlopen from a private temp file.
import { createRequire } from 'node:module';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seaApi } from './runtime.ts';

export interface XattrBinding {
  getAttributeSync(path: string, name: string): Buffer | null;
  listAttributesSync(path: string): string[];
  setAttributeSync(path: string, name: string, value: Uint8Array | string): void;
  removeAttributeSync(path: string, name: string): void;
  setAttribute(path: string, name: string, value: Buffer | string): Promise<void>;
  listAttributes(path: string): Promise<string[]>;
  getAttribute(path: string, name: string): Promise<Buffer | null>;
}

export const XATTR_ASSET = 'xattr.node';
let binding: XattrBinding | undefined;

function loadFromSea(): XattrBinding | undefined {
  const sea = seaApi();
  if (!sea) return undefined;
  const dir = mkdtempSync(join(process.env.RUNTIME_DIRECTORY ?? tmpdir(), 'nip-xattr-'));
  const file = join(dir, XATTR_ASSET);
  writeFileSync(file, Buffer.from(sea.getRawAsset(XATTR_ASSET)), { mode: 0o500 });
  const mod = { exports: {} as XattrBinding };
  try {
    process.dlopen(mod, file);
  } finally {
    // The mapping stays valid after unlink; nothing is left behind in /tmp.
    rmSync(dir, { recursive: true, force: true });
  }
  return mod.exports;
}

export function xattrs(): XattrBinding {
  if (binding) return binding;
  binding = loadFromSea();
  if (!binding) {
    const req = createRequire(typeof __filename === 'string' ? __filename : import.meta.url);
    binding = req('@napi-rs/xattr') as XattrBinding;
  }
  return binding;
}

/** All xattrs of a path (not following symlinks), as name -> raw bytes. */
export function readXattrs(path: string): Map<string, Buffer> {
  const x = xattrs();
  const out = new Map<string, Buffer>();
  for (const name of x.listAttributesSync(path)) {
    const value = x.getAttributeSync(path, name);
    if (value) out.set(name, value);
  }
  return out;
}
