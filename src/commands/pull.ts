import type { Command } from './types.ts';
import { notImplemented, registryOptionHelp, registryOptions } from './shared.ts';

export const pullCommand: Command = {
  name: 'pull',
  summary: 'pull an image from its registry and unpack it into a directory (or an OCI layout)',
  usage: 'pull IMAGE (--dest DIR | --oci-layout DIR) [--authfile F] [--registries-conf F] [--cert-dir D] [--platform OS/ARCH[/VARIANT]] [--json]',
  help: 'DIR is written as DIR.partial and renamed to DIR only when complete.',
  options: {
    dest: { type: 'string' },
    'oci-layout': { type: 'string' },
    ...registryOptions,
    json: { type: 'boolean' },
  },
  optionHelp: {
    dest: 'unpack the image into this directory',
    'oci-layout': 'write a standard OCI image layout (oci-layout, index.json, blobs/) instead',
    ...registryOptionHelp,
    json: 'print the summary as JSON',
  },
  positionals: { names: ['IMAGE'], min: 1, max: 1 },
  async run() {
    notImplemented('pull');
  },
};
