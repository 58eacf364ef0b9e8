import { readFileSync } from 'node:fs';
import { ShardserveError } from '../errors.js';

/**
 * Where and as whom to talk S3, from the usual AWS environment:
 * - AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN;
 * - AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1;
 * - AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (any S3-compatible store), else AWS's regional endpoint;
 * - AWS_S3_FORCE_PATH_STYLE=true|false (default: path-style for a custom endpoint, virtual-hosted for AWS);
 * - AWS_SHARED_CREDENTIALS_FILE (+ AWS_PROFILE, default "default") when the keys are not in the
 *   environment: an INI credentials file, or a file of KEY=value lines (a mounted Secret of env vars).
 * With no credentials at all, requests are sent unsigned (public buckets).
 */
export interface S3Config {
  endpoint: string;
  region: string;
  pathStyle: boolean;
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Where the credentials came from, for messages (never the values). */
  credentialSource: string;
}

type Env = Record<string, string | undefined>;

export function resolveS3Config(env: Env = process.env): S3Config {
  let vars: Env = { ...env };
  let credentialSource = 'environment (AWS_ACCESS_KEY_ID)';
  if (!vars.AWS_ACCESS_KEY_ID && vars.AWS_SHARED_CREDENTIALS_FILE) {
    const file = vars.AWS_SHARED_CREDENTIALS_FILE;
    const fromFile = readCredentialsFile(file, vars.AWS_PROFILE || 'default');
    const defined = Object.fromEntries(Object.entries(vars).filter(([, v]) => v !== undefined && v !== ''));
    // The environment still wins for region/endpoint; the keys come from the file as a set.
    vars = { ...fromFile, ...defined, AWS_ACCESS_KEY_ID: fromFile.AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY: fromFile.AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN: fromFile.AWS_SESSION_TOKEN };
    credentialSource = `credentials file ${file} (profile ${vars.AWS_PROFILE || 'default'})`;
  }
  const region = vars.AWS_REGION || vars.AWS_DEFAULT_REGION || 'us-east-1';
  const custom = vars.AWS_ENDPOINT_URL_S3 || vars.AWS_ENDPOINT_URL;
  let endpoint = custom || (region === 'us-east-1' ? 'https://s3.amazonaws.com' : `https://s3.${region}.amazonaws.com`);
  try {
    const u = new URL(endpoint);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http(s)');
  } catch {
    throw new ShardserveError('BadEndpoint', `AWS_ENDPOINT_URL: '${endpoint}' is not an http(s) URL`, { param: 'AWS_ENDPOINT_URL' });
  }
  endpoint = endpoint.replace(/\/+$/, '');
  const ps = (vars.AWS_S3_FORCE_PATH_STYLE ?? vars.SHARDSERVE_S3_PATH_STYLE ?? '').toLowerCase();
  if (ps && !['true', 'false', '1', '0'].includes(ps)) {
    throw new ShardserveError('BadConfig', `AWS_S3_FORCE_PATH_STYLE: '${ps}' must be true or false`, { param: 'AWS_S3_FORCE_PATH_STYLE' });
  }
  const pathStyle = ps ? ps === 'true' || ps === '1' : Boolean(custom);
  const id = vars.AWS_ACCESS_KEY_ID;
  const secret = vars.AWS_SECRET_ACCESS_KEY;
  if (id && !secret) throw new ShardserveError('BadCredentials', `S3 credentials from ${credentialSource}: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is missing`, { param: 'AWS_SECRET_ACCESS_KEY' });
  if (!id && secret) throw new ShardserveError('BadCredentials', `S3 credentials from ${credentialSource}: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is missing`, { param: 'AWS_ACCESS_KEY_ID' });
  return {
    endpoint,
    region,
    pathStyle,
    credentials: id && secret ? { accessKeyId: id, secretAccessKey: secret, sessionToken: vars.AWS_SESSION_TOKEN || undefined } : undefined,
    credentialSource: id ? credentialSource : 'none (unsigned requests)',
  };
}

/**
 * Read an AWS shared credentials file (INI: `[profile]` then `aws_access_key_id = ...`) or a file of
 * `KEY=value` lines, returning AWS_* variables. Errors name the file and line, never a value.
 */
export function readCredentialsFile(file: string, profile: string): Env {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ShardserveError('BadCredentials', `${file}: cannot read the S3 credentials file named by AWS_SHARED_CREDENTIALS_FILE`, { file, cause: e });
  }
  const lines = text.split(/\r?\n/);
  const isIni = lines.some((l) => /^\s*\[[^\]]+\]\s*$/.test(l));
  const out: Env = {};
  if (!isIni) {
    lines.forEach((raw, i) => {
      const l = raw.trim();
      if (!l || l.startsWith('#')) return;
      const m = /^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(l);
      if (!m) throw new ShardserveError('BadCredentials', `${file}:${i + 1}: expected KEY=value or an INI [profile] section`, { file });
      out[m[1]] = m[2].replace(/^(['"])(.*)\1$/, '$2');
    });
    return out;
  }
  const map: Record<string, string> = {
    aws_access_key_id: 'AWS_ACCESS_KEY_ID', aws_secret_access_key: 'AWS_SECRET_ACCESS_KEY', aws_session_token: 'AWS_SESSION_TOKEN',
    region: 'AWS_REGION', endpoint_url: 'AWS_ENDPOINT_URL',
  };
  let section: string | undefined;
  let found = false;
  lines.forEach((raw, i) => {
    const l = raw.trim();
    if (!l || l.startsWith('#') || l.startsWith(';')) return;
    const s = /^\[\s*(?:profile\s+)?([^\]]+?)\s*\]$/.exec(l);
    if (s) {
      section = s[1];
      if (section === profile) found = true;
      return;
    }
    const kv = /^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$/.exec(l);
    if (!kv) throw new ShardserveError('BadCredentials', `${file}:${i + 1}: expected key = value`, { file });
    if (section === profile && map[kv[1].toLowerCase()]) out[map[kv[1].toLowerCase()]] = kv[2].trim();
  });
  if (!found) throw new ShardserveError('BadCredentials', `${file}: no [${profile}] profile (AWS_PROFILE) in the credentials file`, { file, param: 'AWS_PROFILE' });
  return out;
}
