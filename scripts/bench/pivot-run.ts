// Pivot overhead from a real pivot: boots the e2e machine (systemd-nspawn, the node image on a
// loopback registry), lets the generator send it through node-image-pivot.target, and copies the
// agent's state.json out. extras.ts turns it into "pull done" -> "isolate done".
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { bootMachine } from '../testbed/machine.ts';
import { installInto, setUpPivotFixture } from '../../test/e2e/pivot-fixture.ts';

export async function pivotStateFile(out: string, say: (line: string) => void): Promise<string> {
  say('pivot: booting an nspawn machine that pivots against a loopback registry');
  const fx = await setUpPivotFixture();
  try {
    const m = await bootMachine({
      name: 'nip-bench-pivot',
      prepare: (root) => installInto(root, { image: fx.image.ref, registryHost: fx.registry.host }),
    });
    try {
      await m.waitForUnit('multi-user.target', 'active', 300_000);
      await m.exec(['cp', '/run/node-image-pivot/state.json', '/results/state.json'], { direct: true });
      const copied = join(m.resultsDir, 'state.json');
      if (!existsSync(copied)) throw new Error('the machine has no /run/node-image-pivot/state.json');
      mkdirSync(dirname(out), { recursive: true });
      copyFileSync(copied, out);
      return out;
    } finally {
      await m.dispose();
    }
  } finally {
    await fx.cleanup();
  }
}
