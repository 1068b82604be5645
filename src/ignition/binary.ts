// Which file `--embed` puts into the config: this very executable when running as the single
// executable, else the built one in dist/ (running from source there is no binary to embed).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { PivotError } from '../errors.ts';

function isSea(): boolean {
  try {
    const req = createRequire(typeof __filename === 'string' ? __filename : import.meta.url);
    return (req('node:sea') as { isSea(): boolean }).isSea();
  } catch {
    return false;
  }
}

export function runningBinary(): string {
  if (isSea()) return process.execPath;
  let dir = typeof __dirname === 'string' ? __dirname : import.meta.dirname;
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(dir, 'package.json'))) break;
    dir = dirname(dir);
  }
  const built = join(dir, 'dist', 'node-image-pivot');
  if (!existsSync(built)) {
    throw new PivotError('usage', `--embed needs the single executable, and ${built} does not exist`, {
      path: built, fix: 'run npm run build first, or pass --binary-url and --binary-sha512',
    });
  }
  return built;
}
