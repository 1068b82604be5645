// A compact structural check of an Ignition spec 3.4.0 config, for the parts this project emits.
// Written from the spec's documented field list; returns every problem found, with its JSON path.
export function validateIgnition34(doc: unknown): string[] {
  const problems: string[] = [];
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const only = (o: Record<string, unknown>, at: string, keys: string[]): void => {
    for (const k of Object.keys(o)) if (!keys.includes(k)) problems.push(`${at}.${k}: unknown field`);
  };
  if (!isObj(doc)) return ['$: not an object'];
  only(doc, '$', ['ignition', 'storage', 'systemd', 'passwd', 'kernelArguments']);
  if (!isObj(doc.ignition) || doc.ignition.version !== '3.4.0') problems.push('$.ignition.version: must be "3.4.0"');

  const storage = doc.storage;
  if (storage !== undefined) {
    if (!isObj(storage)) problems.push('$.storage: not an object');
    else {
      only(storage, '$.storage', ['files', 'directories', 'links', 'disks', 'filesystems', 'raid', 'luks']);
      const files = storage.files ?? [];
      if (!Array.isArray(files)) problems.push('$.storage.files: not an array');
      const seen = new Set<string>();
      (Array.isArray(files) ? files : []).forEach((f: unknown, i) => {
        const at = `$.storage.files[${i}]`;
        if (!isObj(f)) return problems.push(`${at}: not an object`);
        only(f, at, ['path', 'overwrite', 'contents', 'append', 'mode', 'user', 'group']);
        if (typeof f.path !== 'string' || !f.path.startsWith('/')) problems.push(`${at}.path: must be an absolute path`);
        else if (seen.has(f.path)) problems.push(`${at}.path: duplicate ${f.path}`);
        else seen.add(f.path);
        if (f.overwrite !== undefined && typeof f.overwrite !== 'boolean') problems.push(`${at}.overwrite: must be a boolean`);
        if (f.mode !== undefined && (!Number.isInteger(f.mode) || (f.mode as number) < 0 || (f.mode as number) > 0o7777)) {
          problems.push(`${at}.mode: must be an integer (decimal of the octal mode)`);
        }
        const c = f.contents;
        if (c === undefined) return;
        if (!isObj(c)) return problems.push(`${at}.contents: not an object`);
        only(c, `${at}.contents`, ['source', 'compression', 'httpHeaders', 'verification']);
        if (typeof c.source !== 'string' || !/^(https?|tftp|s3|gs|arn|data):/.test(c.source)) problems.push(`${at}.contents.source: must be a URL Ignition can fetch`);
        if (c.compression !== undefined && c.compression !== null && c.compression !== '' && c.compression !== 'gzip') {
          problems.push(`${at}.contents.compression: must be gzip or empty`);
        }
        if (c.verification !== undefined) {
          if (!isObj(c.verification)) problems.push(`${at}.contents.verification: not an object`);
          else {
            only(c.verification, `${at}.contents.verification`, ['hash']);
            const h = c.verification.hash;
            if (typeof h !== 'string' || !/^(sha512-[0-9a-f]{128}|sha256-[0-9a-f]{64})$/.test(h)) {
              problems.push(`${at}.contents.verification.hash: must be sha512-<128 hex> or sha256-<64 hex>`);
            }
          }
        }
      });
    }
  }

  const systemd = doc.systemd;
  if (systemd !== undefined) {
    if (!isObj(systemd)) problems.push('$.systemd: not an object');
    else {
      only(systemd, '$.systemd', ['units']);
      const units = systemd.units ?? [];
      if (!Array.isArray(units)) problems.push('$.systemd.units: not an array');
      const seen = new Set<string>();
      (Array.isArray(units) ? units : []).forEach((u: unknown, i) => {
        const at = `$.systemd.units[${i}]`;
        if (!isObj(u)) return problems.push(`${at}: not an object`);
        only(u, at, ['name', 'enabled', 'mask', 'contents', 'dropins']);
        if (typeof u.name !== 'string' || !/^[A-Za-z0-9:_.\\@-]+\.(service|target|socket|mount|timer|path|slice|scope|automount|swap|device)$/.test(u.name)) {
          problems.push(`${at}.name: must be a unit name with its type suffix`);
        } else if (seen.has(u.name)) problems.push(`${at}.name: duplicate ${u.name}`);
        else seen.add(u.name);
        for (const k of ['enabled', 'mask'] as const) {
          if (u[k] !== undefined && u[k] !== null && typeof u[k] !== 'boolean') problems.push(`${at}.${k}: must be a boolean`);
        }
        if (u.contents !== undefined && typeof u.contents !== 'string') problems.push(`${at}.contents: must be a string`);
      });
    }
  }
  return problems;
}

/** RFC 2397 decoding for the two forms this project writes. */
export function decodeDataUrl(url: string): Buffer {
  const m = /^data:([^,]*),(.*)$/s.exec(url);
  if (!m) throw new Error(`not a data URL: ${url.slice(0, 40)}`);
  return m[1]!.endsWith(';base64') ? Buffer.from(m[2]!, 'base64') : Buffer.from(decodeURIComponent(m[2]!), 'utf8');
}
