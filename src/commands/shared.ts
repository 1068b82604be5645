import { PivotError } from '../errors.ts';
import type { RegistryOptions } from '../registry/index.ts';
import type { OptionSpec, ParsedArgs } from './types.ts';

/** Registry access flags shared by pull and resolve (containers-auth.json(5) and friends). */
export const registryFlags: OptionSpec = {
  authfile: { type: 'string' },
  'registries-conf': { type: 'string' },
  'cert-dir': { type: 'string' },
  platform: { type: 'string' },
};

export const registryFlagHelp: Record<string, string> = {
  authfile: 'auth file (default: $REGISTRY_AUTH_FILE, /run/containers/0/auth.json, /root/.docker/config.json)',
  'registries-conf': 'registries.conf with mirrors and blocks (default: /etc/containers/registries.conf)',
  'cert-dir': 'directory of extra CA *.crt files (default: /etc/containers/certs.d/HOST[:PORT])',
  platform: 'OS/ARCH[/VARIANT] to select from a multi-arch index (default: this host)',
};

/** The registry flags shared by pull and resolve, as RegistryOptions. */
export function registryOptionsFromFlags(values: ParsedArgs['values']): RegistryOptions {
  const authfile = stringOpt(values, 'authfile');
  const registriesConf = stringOpt(values, 'registries-conf');
  const certDir = stringOpt(values, 'cert-dir');
  const platform = stringOpt(values, 'platform');
  return {
    ...(authfile ? { authfile } : {}),
    ...(registriesConf ? { registriesConf } : {}),
    ...(certDir ? { certDir } : {}),
    ...(platform ? { platform } : {}),
  };
}

export function stringOpt(values: Record<string, unknown>, name: string): string | undefined {
  const v = values[name];
  return typeof v === 'string' ? v : undefined;
}

export function requireOpt(values: Record<string, unknown>, name: string, command: string): string {
  const v = stringOpt(values, name);
  if (v === undefined || v === '') {
    throw new PivotError('usage', `${command}: missing --${name}`, { fix: `run 'node-image-pivot ${command} --help'` });
  }
  return v;
}
