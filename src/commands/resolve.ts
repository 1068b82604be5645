import type { Command } from './types.ts';
import { notImplemented, registryOptionHelp, registryOptions } from './shared.ts';

export const resolveCommand: Command = {
  name: 'resolve',
  summary: "print a release image component's pullspec from release-manifests/image-references",
  usage: 'resolve RELEASE_IMAGE [--component NAME] [--authfile F] [--registries-conf F] [--cert-dir D] [--platform P] [--json]',
  help: 'Reads only as many layers as it takes to find the file; never runs a container.',
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
  async run() {
    notImplemented('resolve');
  },
};
