// The in-process runner of scripts/bench/hostile.ts for cases that need timeouts the CLI does not
// take as flags: openImage + writeOciLayout with HOSTILE_TIMEOUTS (JSON), exiting as the CLI would.
//   HOSTILE_TIMEOUTS='{"pullSeconds":5}' node scripts/bench/hostile-open.ts REF REGISTRIES_CONF OUT_DIR
import { reportFailure } from '../../src/cli.ts';
import { openImage, writeOciLayout } from '../../src/registry/index.ts';

const [ref, registriesConf, out] = process.argv.slice(2) as [string, string, string];
const timeouts = JSON.parse(process.env.HOSTILE_TIMEOUTS ?? '{}') as Record<string, number>;
try {
  const image = await openImage(ref, { registriesConf, timeouts });
  try {
    await writeOciLayout(image, out);
  } finally {
    await image.close();
  }
} catch (err) {
  process.exitCode = reportFailure(err);
}
