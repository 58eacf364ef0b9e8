import { readFileSync } from 'node:fs';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type { DecryptionMode, DecryptionOptions } from '../core/checkpoint/types.js';
import { parseKey } from '../core/ckpt/decrypt.js';
import { ShardserveError } from '../core/errors.js';

type Options = NonNullable<ParseArgsConfig['options']>;

/** node:util parseArgs with its errors turned into one-line usage errors (exit 2). */
export function parseFlags<O extends Options>(argv: string[], options: O, positionals = 0) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, allowPositionals: positionals > 0, strict: true });
  } catch (e) {
    throw new ShardserveError('Usage', (e as Error).message.split('\n')[0].replace(/^Unknown option/, 'unknown option'));
  }
  if (parsed.positionals.length > positionals) throw new ShardserveError('Usage', `unexpected argument '${parsed.positionals[positionals]}'`);
  return parsed;
}

export function required(value: string | undefined, flag: string): string {
  if (value === undefined || value === '') throw new ShardserveError('Usage', `${flag} is required`);
  return value;
}

/** An integer flag; undefined when absent. */
export function intFlag(value: string | undefined, flag: string, min = 0): number | undefined {
  if (value === undefined) return undefined;
  if (!/^-?\d+$/.test(value.trim()) || Number(value) < min) throw new ShardserveError('Usage', `${flag} must be an integer ≥ ${min}, got '${value}'`);
  return Number(value);
}

export const decryptionFlags = {
  'key-file': { type: 'string' },
  'key-env': { type: 'string' },
  'dec-mode': { type: 'string' },
} as const;

const MODES: DecryptionMode[] = ['AES-GCM', 'AES-CBC', 'SM4-CBC'];

/**
 * The decryption key of an encrypted .ckpt, only ever from a file (--key-file) or an environment
 * variable named by --key-env — never from a flag value, which `ps` would show.
 */
export function decryptionFrom(values: { 'key-file'?: string; 'key-env'?: string; 'dec-mode'?: string }): DecryptionOptions | undefined {
  const mode = values['dec-mode'];
  if (mode !== undefined && !MODES.includes(mode as DecryptionMode)) throw new ShardserveError('Usage', `--dec-mode must be one of ${MODES.join(', ')}, got '${mode}'`);
  if (values['key-file'] && values['key-env']) throw new ShardserveError('Usage', 'give either --key-file or --key-env, not both');
  let key: Uint8Array | undefined;
  if (values['key-file']) {
    let raw: Uint8Array;
    try {
      raw = readFileSync(values['key-file']);
    } catch {
      throw new ShardserveError('NotFound', `${values['key-file']}: cannot read the key file`, { file: values['key-file'] });
    }
    key = parseKey(raw, values['key-file']);
  } else if (values['key-env']) {
    const v = process.env[values['key-env']];
    if (!v) throw new ShardserveError('Usage', `environment variable ${values['key-env']} (from --key-env) is not set`);
    key = parseKey(Buffer.from(v, 'latin1'), `$${values['key-env']}`);
  }
  if (!key) {
    if (mode) throw new ShardserveError('Usage', '--dec-mode needs a key: --key-file <file> or --key-env <VAR>');
    return undefined;
  }
  return { key, mode: (mode as DecryptionMode | undefined) ?? 'AES-GCM' };
}

export const targetFlags = {
  world: { type: 'string' },
  stages: { type: 'string' },
  tp: { type: 'string' },
} as const;

/** --world/--stages/--tp, or undefined when none is given. */
export function targetFrom(values: { world?: string; stages?: string; tp?: string }): { world?: number; stages?: number; tp?: number } | undefined {
  if (values.world === undefined && values.stages === undefined && values.tp === undefined) return undefined;
  return { world: intFlag(values.world, '--world', 1), stages: intFlag(values.stages, '--stages', 1), tp: intFlag(values.tp, '--tp', 1) };
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  let v = n;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
}

/** The rename map of --parameter-names: a JSON file {"checkpoint name": "initializer name"}. */
export function parameterNamesFrom(path: string | undefined): Record<string, string> | undefined {
  if (path === undefined) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ShardserveError('Usage', `${path}: --parameter-names must be a JSON file {"checkpoint name": "initializer name"} (${(e as Error).message.split('\n')[0]})`, { file: path });
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed) || Object.values(parsed).some((v) => typeof v !== 'string')) {
    throw new ShardserveError('Usage', `${path}: --parameter-names must map checkpoint names to initializer names (strings)`, { file: path });
  }
  return parsed as Record<string, string>;
}
