import type { Command } from './types.ts';
import { registryFlagHelp, registryFlags, registryOptionsFromFlags, stringOpt } from './shared.ts';

export const resolveCommand: Command = {
  name: 'resolve',
  summary: "print a release image component's pullspec from release-manifests/image-references",
  usage: 'resolve RELEASE_IMAGE [--component NAME] [--authfile F] [--registries-conf F] [--cert-dir D] [--platform P] [--json]',
  help: 'Reads layers from the top down until one holds the file, that layer whole and through its digest check (a mismatch is exit 4); never runs a container.',
  options: {
    component: { type: 'string' },
    ...registryFlags,
    json: { type: 'boolean' },
  },
  optionHelp: {
    component: 'the image-references tag to look up (default: rhel-coreos)',
    ...registryFlagHelp,
    json: 'print the result and byte counts as JSON',
  },
  positionals: { names: ['RELEASE_IMAGE'], min: 1, max: 1 },
  async run(args) {
    const [{ resolveComponent }, { DEFAULT_COMPONENT }] = await Promise.all([import('../registry/index.ts'), import('../config.ts')]);
    const component = stringOpt(args.values, 'component') ?? DEFAULT_COMPONENT;
    const r = await resolveComponent(args.positionals[0]!, component, registryOptionsFromFlags(args.values));
    process.stdout.write(args.values.json ? `${JSON.stringify({ component, ...r })}\n` : `${r.pullspec}\n`);
    return 0;
  },
};
