// Where this code runs: inside the single executable, or from the repository (source or bundle).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

type SeaApi = { isSea(): boolean; getRawAsset(name: string): ArrayBuffer };

/** node:sea when running as the single executable, else undefined. */
export function seaApi(): SeaApi | undefined {
  try {
    // createRequire: `node:sea` must not be bundled or resolved at load time in older runtimes.
    const req = createRequire(typeof __filename === 'string' ? __filename : import.meta.url);
    const sea = req('node:sea') as SeaApi;
    return sea.isSea() ? sea : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The repository root: the first ancestor with a package.json (dist/ in the bundle, src/ or
 * src/ignition/ from source). Falls back to the working directory.
 */
export function packageRoot(): string {
  let dir = typeof __dirname === 'string' ? __dirname : import.meta.dirname;
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return process.cwd();
}
