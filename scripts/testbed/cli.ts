// npm run testbed -- COMMAND: the test bed by hand.
//   rootfs [--force]             build (or rebuild) the cached rootfs; prints the timings
//   boot [--unit U] [--bind H:G[:ro]]... [--no-agent]
//                                boot a machine and keep it up until Ctrl-C; prints how to get in
//   run [--unit U] [--bind ...] -- CMD [ARGS...]
//                                boot, run CMD under the guest's systemd, print its output, power off
//   clean                        remove the cache (.cache/testbed)
import { rmSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { bootMachine, type Bind, type BootOptions } from './machine.ts';
import { cacheDir, ensureRootfs, rootfsKey } from './rootfs.ts';

const USAGE = `usage: npm run testbed -- rootfs [--force]
       npm run testbed -- boot [--unit UNIT] [--bind HOST:GUEST[:ro]]... [--no-agent]
       npm run testbed -- run [--unit UNIT] [--bind HOST:GUEST[:ro]]... -- CMD [ARGS...]
       npm run testbed -- clean`;

function parseBind(spec: string): Bind {
  const [host, guest, ro] = spec.split(':');
  if (!host || !guest || (ro !== undefined && ro !== 'ro')) throw new Error(`bad --bind ${spec}: expected HOST:GUEST[:ro]`);
  return { host, guest, ro: ro === 'ro' };
}

function bootOptions(values: { unit?: string; bind?: string[]; 'no-agent'?: boolean }): BootOptions {
  return {
    ...(values.unit ? { bootUnit: values.unit } : {}),
    binds: (values.bind ?? []).map(parseBind),
    ...(values['no-agent'] ? { agentBinary: null } : {}),
  };
}

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      force: { type: 'boolean' },
      unit: { type: 'string' },
      bind: { type: 'string', multiple: true },
      'no-agent': { type: 'boolean' },
    },
  });
  switch (command) {
    case 'rootfs': {
      const r = await ensureRootfs({ force: values.force ?? false });
      console.log(`rootfs ${rootfsKey()}: ${r.tree}\n  tarball ${r.tarball}\n  ${r.built ? 'built' : r.extracted ? 'extracted' : 'cached'} in ${r.seconds.toFixed(1)} s`);
      return 0;
    }
    case 'boot': {
      const m = await bootMachine(bootOptions(values));
      console.log(`machine ${m.name} up: nspawn pid ${m.nspawnPid}, guest PID 1 = host pid ${m.leaderPid}
  shell:    nsenter -t ${m.leaderPid} -a bash
  journal:  nsenter -t ${m.leaderPid} -a journalctl -f
  root:     ${m.root} (upper ${m.upper}), /results = ${m.resultsDir}
  sshd:     127.0.0.1:${m.sshPort}
Ctrl-C powers it off and removes it.`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', () => resolve());
        process.once('SIGTERM', () => resolve());
      });
      await m.dispose();
      return 0;
    }
    case 'run': {
      if (!positionals.length) throw new Error('run: give the command after --');
      const m = await bootMachine(bootOptions(values));
      try {
        await m.waitForSystemState(['running', 'degraded']);
        const r = await m.exec(positionals);
        process.stdout.write(r.stdout);
        process.stderr.write(r.stderr);
        return r.exitCode;
      } finally {
        await m.dispose();
      }
    }
    case 'clean':
      rmSync(cacheDir(), { recursive: true, force: true });
      console.log(`removed ${cacheDir()}`);
      return 0;
    default:
      console.error(USAGE);
      return 2;
  }
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (err) {
  console.error(`testbed: ${(err as Error).message}`);
  process.exitCode = 1;
}
