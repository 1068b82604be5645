// npm run demo: one throwaway pivot you can watch. It builds what is missing, starts a loopback
// registry, pushes the demo node image, boots a systemd-nspawn machine that the generator sends
// into node-image-pivot.target, follows the agent's journal live, then prints `status` and the
// phase timings. Everything is torn down at the end, on failure and on Ctrl-C.
import { spawn } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { REPO_ROOT, ensureRootfs } from '../testbed/rootfs.ts';
import { bootMachine, type Machine } from '../testbed/machine.ts';
import { installInto, setUpPivotFixture, type PivotFixture } from '../../test/e2e/pivot-fixture.ts';
import { NODE_VERSION_FILE } from '../../test/helpers/node-image.ts';

const say = (line: string): void => {
  process.stdout.write(`\x1b[1mdemo:\x1b[0m ${line}\n`);
};

function newestSource(dir: string): number {
  let newest = 0;
  const walk = (d: string): void => {
    for (const name of readdir(d)) {
      const p = join(d, name);
      const st = statSync(p);
      if (st.isDirectory()) walk(p);
      else newest = Math.max(newest, st.mtimeMs);
    }
  };
  walk(dir);
  return newest;
}
function readdir(d: string): string[] {
  return existsSync(d) ? readdirSync(d) : [];
}

let fixture: PivotFixture | undefined;
let machine: Machine | undefined;
let tearingDown = false;

async function teardown(): Promise<void> {
  if (tearingDown) return;
  tearingDown = true;
  if (machine) {
    say('powering the machine off');
    await machine.dispose().catch(() => undefined);
  }
  if (fixture) await fixture.cleanup().catch(() => undefined);
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    say(`${signal}: tearing down`);
    void teardown().finally(() => process.exit(130));
  });
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the demo boots a systemd-nspawn machine and needs root');
  await execa('bash', [join(REPO_ROOT, 'scripts/testbed/install-deps.sh')], { stdio: 'inherit' });
  const binary = join(REPO_ROOT, 'dist/node-image-pivot');
  if (!existsSync(binary) || statSync(binary).mtimeMs < Math.max(newestSource(join(REPO_ROOT, 'src')), newestSource(join(REPO_ROOT, 'units')))) {
    say('building dist/node-image-pivot');
    await execa('npm', ['run', '--silent', 'build'], { cwd: REPO_ROOT, stdio: 'inherit' });
  }
  say('preparing the boot image (cached after the first run)');
  await ensureRootfs({ say });
  say('starting a registry on 127.0.0.1 and pushing the node image (boot image + kubelet layer)');
  fixture = await setUpPivotFixture();
  say(`node image: ${fixture.image.ref}`);
  say('booting a machine whose generator sends it to node-image-pivot.target');
  const started = performance.now();
  machine = await bootMachine({
    name: 'nip-demo',
    prepare: (root) => installInto(root, { image: fixture!.image.ref, registryHost: fixture!.registry.host }),
  });
  // Follow the agent's journal inside the guest, as an operator would.
  const follow = spawn('nsenter', ['-t', String(machine.leaderPid), '-a', 'journalctl', '-f', '-n', 'all', '-o', 'cat', '-u', 'node-image-pivot.service'], { stdio: ['ignore', 'pipe', 'inherit'] });
  follow.stdout.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n').filter(Boolean)) {
      const json = line.replace(/^<\d>/, '');
      try {
        const entry = JSON.parse(json) as { msg?: string; phase?: string };
        process.stdout.write(`  \x1b[2mguest\x1b[0m ${entry.msg ?? json}\n`);
      } catch {
        process.stdout.write(`  \x1b[2mguest\x1b[0m ${line}\n`);
      }
    }
  });
  try {
    await machine.waitForUnit('multi-user.target', 'active', 300_000);
    await machine.waitForUnit('kubelet.service', ['active', 'failed'], 60_000);
  } finally {
    follow.kill();
  }
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  say(`the machine reached multi-user.target on the node image's /usr, ${seconds} s after boot started`);
  const status = await machine.exec(['/usr/local/bin/node-image-pivot', 'status']);
  process.stdout.write(`\n$ node-image-pivot status\n${status.stdout}\n`);
  const proof = await machine.exec(['sh', '-c', `cat ${NODE_VERSION_FILE}; systemctl is-active kubelet.service; cat /var/lib/nip/kubelet-marker; ls /usr/lib/modules`], { direct: true });
  process.stdout.write(`$ cat ${NODE_VERSION_FILE}; systemctl is-active kubelet; cat /var/lib/nip/kubelet-marker; ls /usr/lib/modules\n${proof.stdout}\n`);
}

main().then(
  async () => {
    await teardown();
    say('done; everything was torn down');
  },
  async (err: unknown) => {
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
    await teardown();
    process.exit(1);
  },
);
