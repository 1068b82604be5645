// Which file `--embed` puts into the config: this very executable when running as the single
// executable, else the built one in dist/ (running from source there is no binary to embed).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PivotError } from '../errors.ts';
import { packageRoot, seaApi } from '../runtime.ts';

export function runningBinary(): string {
  if (seaApi()) return process.execPath;
  const built = join(packageRoot(), 'dist', 'node-image-pivot');
  if (!existsSync(built)) {
    throw new PivotError('usage', `--embed needs the single executable, and ${built} does not exist`, {
      path: built, fix: 'run npm run build first, or pass --binary-url and --binary-sha512',
    });
  }
  return built;
}
