import type { Command } from './types.ts';
import { registryOptionHelp, registryOptions, stringOpt } from './shared.ts';
import { registryOptionsFrom } from './pull.ts';

export const resolveCommand: Command = {
  name: 'resolve',
  summary: "print a release image component's pullspec from release-manifests/image-references",
  usage: 'resolve RELEASE_IMAGE [--component NAME] [--authfile F] [--registries-conf F] [--cert-dir D] [--platform P] [--json]',
  help: 'Reads layers from the top down until one holds the file, that layer whole and through its digest check (a mismatch is exit 4); never runs a container.',
  options: {
    component: { type: 'string' },
    ...registryOptions,
    json: { type: 'boolean' },
  },
  optionHelp: {
    component: 'the image-references tag to look up (default: rhel-coreos)',
    ...registryOptionHelp,
    json: 'print the result and byte counts as JSON',
  },
  positionals: { names: ['RELEASE_IMAGE'], min: 1, max: 1 },
  async run(args) {
    const { resolveComponent } = await import('../registry/index.ts');
    const component = stringOpt(args.values, 'component') ?? 'rhel-coreos';
    const r = await resolveComponent(args.positionals[0]!, component, registryOptionsFrom(args.values));
    process.stdout.write(args.values.json ? `${JSON.stringify({ component, ...r })}\n` : `${r.pullspec}\n`);
    return 0;
  },
};
