import pkg from '../package.json' with { type: 'json' };

export const TOOL_VERSION: string = pkg.version;

export function versionLine(): string {
  return `node-image-pivot ${TOOL_VERSION} (node ${process.versions.node}, ${process.platform}/${process.arch})`;
}
