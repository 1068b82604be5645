// The unit files and the generator that the Ignition config installs. In development they are read
// from units/ at generation time, so the config always matches what is in the tree; the bundle
// (and so the single executable) carries them, inlined by scripts/build/build.ts through esbuild's
// `define`, because the binary runs where no source tree exists.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PivotError, isErrno } from '../errors.ts';
import { packageRoot } from '../runtime.ts';

/** Order here is the order in the Ignition config. */
export const UNIT_NAMES = ['node-image-pivot.target', 'node-image-pivot.service', 'node-image-overlay.service'] as const;
export const GENERATOR_NAME = 'node-image-pivot-generator';

export interface UnitAssets {
  units: Record<string, string>;
  generator: string;
}

declare const __NODE_IMAGE_PIVOT_ASSETS__: UnitAssets | undefined;

export const DEFAULT_UNITS_DIR = (): string => join(packageRoot(), 'units');

/** Reads units/ from disk. Used in development and by the build to embed them. */
export function readUnitAssets(unitsDir: string = DEFAULT_UNITS_DIR()): UnitAssets {
  const read = (name: string): string => {
    const path = join(unitsDir, name);
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      if (isErrno(err, 'ENOENT')) {
        throw new PivotError('internal', `unit file ${name} is missing from ${unitsDir}`, {
          path, fix: 'run from a complete source tree, or use a released node-image-pivot binary that embeds its units',
        });
      }
      throw err;
    }
  };
  const units: Record<string, string> = {};
  for (const name of UNIT_NAMES) units[name] = read(name);
  return { units, generator: read(GENERATOR_NAME) };
}

/** The embedded copy when running from the bundle, else units/ on disk. */
export function unitAssets(): UnitAssets {
  if (typeof __NODE_IMAGE_PIVOT_ASSETS__ !== 'undefined' && __NODE_IMAGE_PIVOT_ASSETS__) return __NODE_IMAGE_PIVOT_ASSETS__;
  return readUnitAssets();
}
