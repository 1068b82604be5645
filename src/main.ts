// Entry point of the bundle and the single executable.
import { main } from './cli.ts';

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`node-image-pivot: internal error: ${String(err)}\n`);
    process.exitCode = 1;
  },
);
