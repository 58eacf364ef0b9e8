import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { networkError } from './remote.js';
import { resolveS3Config } from './s3-config.js';
import { parseS3Uri } from './s3.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ss-s3cfg-'));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('resolveS3Config', () => {
  it('reads the AWS environment, with path-style by default for a custom endpoint', () => {
    const c = resolveS3Config({ AWS_ACCESS_KEY_ID: 'AK', AWS_SECRET_ACCESS_KEY: 'SK', AWS_SESSION_TOKEN: 'TOK', AWS_DEFAULT_REGION: 'eu-west-1', AWS_ENDPOINT_URL: 'http://127.0.0.1:9000/' });
    expect(c).toEqual({ endpoint: 'http://127.0.0.1:9000', region: 'eu-west-1', pathStyle: true, credentials: { accessKeyId: 'AK', secretAccessKey: 'SK', sessionToken: 'TOK' }, credentialSource: 'environment (AWS_ACCESS_KEY_ID)' });
    expect(resolveS3Config({ AWS_REGION: 'ap-south-1', AWS_DEFAULT_REGION: 'x' })).toMatchObject({ endpoint: 'https://s3.ap-south-1.amazonaws.com', region: 'ap-south-1', pathStyle: false, credentials: undefined });
    expect(resolveS3Config({ AWS_ENDPOINT_URL: 'http://a', AWS_ENDPOINT_URL_S3: 'http://b', AWS_S3_FORCE_PATH_STYLE: 'false' })).toMatchObject({ endpoint: 'http://b', pathStyle: false });
  });

  it('reads an INI credentials file profile, and a KEY=value env file', async () => {
    const ini = join(dir, 'credentials');
    await writeFile(ini, '[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n[prod]\naws_access_key_id = P\naws_secret_access_key = PS\naws_session_token = PT\nregion = us-west-2\n');
    expect(resolveS3Config({ AWS_SHARED_CREDENTIALS_FILE: ini }).credentials).toEqual({ accessKeyId: 'D', secretAccessKey: 'DS', sessionToken: undefined });
    const p = resolveS3Config({ AWS_SHARED_CREDENTIALS_FILE: ini, AWS_PROFILE: 'prod' });
    expect(p.credentials).toEqual({ accessKeyId: 'P', secretAccessKey: 'PS', sessionToken: 'PT' });
    expect(p.region).toBe('us-west-2');
    expect(p.credentialSource).toBe(`credentials file ${ini} (profile prod)`);
    expect(() => resolveS3Config({ AWS_SHARED_CREDENTIALS_FILE: ini, AWS_PROFILE: 'nope' })).toThrow(`${ini}: no [nope] profile (AWS_PROFILE) in the credentials file`);

    const envFile = join(dir, 'secret.env');
    await writeFile(envFile, '# mounted Secret\nAWS_ACCESS_KEY_ID=E\nexport AWS_SECRET_ACCESS_KEY="ES"\nAWS_ENDPOINT_URL=http://127.0.0.1:1234\n');
    expect(resolveS3Config({ AWS_SHARED_CREDENTIALS_FILE: envFile })).toMatchObject({ endpoint: 'http://127.0.0.1:1234', pathStyle: true, credentials: { accessKeyId: 'E', secretAccessKey: 'ES' } });
    // The environment's keys win over the file.
    expect(resolveS3Config({ AWS_SHARED_CREDENTIALS_FILE: envFile, AWS_ACCESS_KEY_ID: 'X', AWS_SECRET_ACCESS_KEY: 'Y' }).credentials?.accessKeyId).toBe('X');
  });

  it('rejects half-set keys, bad endpoints and unreadable files without printing secrets', async () => {
    expect(() => resolveS3Config({ AWS_ACCESS_KEY_ID: 'AK' })).toThrow('AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is missing');
    expect(() => resolveS3Config({ AWS_ENDPOINT_URL: 'ftp://x' })).toThrow(`AWS_ENDPOINT_URL: 'ftp://x' is not an http(s) URL`);
    expect(() => resolveS3Config({ AWS_SHARED_CREDENTIALS_FILE: join(dir, 'missing') })).toThrow(/missing: cannot read the S3 credentials file named by AWS_SHARED_CREDENTIALS_FILE/);
    const bad = join(dir, 'bad.env');
    await writeFile(bad, 'AWS_ACCESS_KEY_ID=sekrit\nthis is not a pair\n');
    const err = (() => { try { resolveS3Config({ AWS_SHARED_CREDENTIALS_FILE: bad }); } catch (e) { return e as Error; } })();
    expect(err?.message).toBe(`${bad}:2: expected KEY=value or an INI [profile] section`);
    expect(err?.message).not.toContain('sekrit');
  });
});

describe('S3 URIs and network errors', () => {
  it('parses s3://bucket/prefix', () => {
    expect(parseS3Uri('s3://ckpts/run-7/')).toEqual({ bucket: 'ckpts', prefix: 'run-7' });
    expect(parseS3Uri('s3://ckpts')).toEqual({ bucket: 'ckpts', prefix: '' });
    expect(() => parseS3Uri('s3:///x')).toThrow("s3:///x: expected s3://<bucket>/<prefix>");
  });

  it('maps an unknown host to BadEndpoint (final) and a reset to a transient failure', () => {
    const dns = Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error('getaddrinfo ENOTFOUND nohost.invalid'), { code: 'ENOTFOUND' }) });
    const e = networkError(dns, 's3://b/k', 'http://nohost.invalid:9000', 1000);
    expect(e.code).toBe('BadEndpoint');
    expect(e.message).toBe('s3://b/k: endpoint http://nohost.invalid:9000 does not resolve (ENOTFOUND); check the endpoint URL');
    expect((e as { transient?: boolean }).transient).toBeUndefined();
    const reset = Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }) });
    expect(networkError(reset, 's3://b/k', 'http://h', 1000)).toMatchObject({ code: 'ConnectionFailed', transient: true });
  });
});
