// npm run testbed:vm -- image [--force]            build (or find) the cached image; prints paths and seconds
//                      run [--memory MiB] [KARG=V...] [-- CMD...]  boot a VM, run CMD (default: getenforce) as a
//                                                      service, print timings, power off
import { bootVm } from './machine.ts';
import { ensureVmImage } from './image.ts';

async function main(argv: string[]): Promise<number> {
  const [verb, ...rest] = argv;
  if (verb === 'image') {
    const img = await ensureVmImage({ force: rest.includes('--force') });
    process.stdout.write(`${JSON.stringify(img, null, 2)}\n`);
    return 0;
  }
  if (verb === 'run') {
    const dash = rest.indexOf('--');
    const cmd = dash >= 0 ? rest.slice(dash + 1) : ['getenforce'];
    const mem = rest.indexOf('--memory');
    const memoryMiB = mem >= 0 ? Number(rest[mem + 1]) : 2048;
    const kernelArgs = rest.slice(0, dash >= 0 ? dash : undefined).filter((a) => a.includes('=') && !a.startsWith('--'));
    await ensureVmImage();
    const t0 = performance.now();
    const vm = await bootVm({ name: 'cli', memoryMiB, kernelArgs });
    try {
      const agentUp = (performance.now() - t0) / 1000;
      await vm.waitForUnit('multi-user.target', 'active');
      const multiUser = (performance.now() - t0) / 1000;
      const r = await vm.exec(cmd);
      process.stdout.write(r.stdout);
      process.stderr.write(r.stderr);
      process.stderr.write(`testbed-vm: agent answered after ${agentUp.toFixed(1)} s, multi-user.target active after ${multiUser.toFixed(1)} s; exit ${r.exitCode}\n`);
      const t1 = performance.now();
      await vm.poweroff();
      process.stderr.write(`testbed-vm: poweroff (with journal/audit collection) ${((performance.now() - t1) / 1000).toFixed(1)} s\n`);
      return r.exitCode;
    } finally {
      await vm.dispose();
    }
  }
  process.stderr.write('usage: npm run testbed:vm -- image [--force] | run [--memory MiB] [-- CMD...]\n');
  return 2;
}

process.exitCode = await main(process.argv.slice(2));
