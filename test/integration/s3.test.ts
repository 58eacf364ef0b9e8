// s3:// storage against a real MinIO server (built from its Go module by test/harness/minio.ts):
// list with pagination, stat, ranged and whole reads, and every failure the issue names.
import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AwsV4Signer } from 'aws4fetch';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { readRanges } from '../../core/storage/ranged-read.js';
import type { ByteSource } from '../../core/storage/source.js';
import { S3Client, openS3Storage } from '../../core/storage/s3.js';
import { openStorage } from '../../core/storage/storage.js';
import { createTensorFileWriter } from '../../core/checkpoint/writer.js';
import { startS3Server, uploadDir, type S3Server } from '../harness/minio.js';
import { freePort } from '../harness/ports.js';
import { countingProxy, makeCheckpointDir, type Proxy } from './storage-servers.js';

let work: string;
let server: S3Server;
let proxy: Proxy;
const savedEnv = { ...process.env };

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'ss-s3-'));
  server = await startS3Server({ dataDir: join(work, 'data') });
  const c = server.client();
  await c.createBucket('ckpt');
  await c.createBucket('private');
  await makeCheckpointDir(join(work, 'fixture'), { ranks: 2, records: 20, elements: 256 });
  await uploadDir(c, 'ckpt', 'run1', join(work, 'fixture'));
  for (let i = 0; i < 7; i++) await c.putObject('ckpt', `many/f${i}.bin`, `s3://ckpt/many/f${i}.bin`, new Uint8Array([i]));
  await c.putObject('ckpt', 'odd keys/a b+c(1).bin', 's3://ckpt/odd keys/a b+c(1).bin', new Uint8Array([1, 2, 3]));
  await c.putObject('private', 'secret.bin', 's3://private/secret.bin', new Uint8Array(10));
  proxy = await countingProxy(server.endpoint);
});
afterAll(async () => {
  await proxy?.close();
  await server?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});
afterEach(() => {
  process.env = { ...savedEnv };
  proxy.truncateTo = undefined;
  proxy.reset();
});

function clientWith(over: Partial<{ endpoint: string; accessKeyId: string; secretAccessKey: string; sessionToken: string; anonymous: boolean }> = {}): S3Client {
  return new S3Client({
    endpoint: over.endpoint ?? server.endpoint,
    region: server.region,
    pathStyle: true,
    credentials: over.anonymous ? undefined : { accessKeyId: over.accessKeyId ?? server.accessKey, secretAccessKey: over.secretAccessKey ?? server.secretKey, sessionToken: over.sessionToken },
    credentialSource: 'test',
  });
}

describe('s3:// storage on MinIO', () => {
  it('opens through openStorage from the AWS environment and lists, stats and reads exact bytes', async () => {
    Object.assign(process.env, server.env());
    const st = await openStorage('s3://ckpt/run1');
    const listed = await st.list();
    expect(listed.map((o) => o.key)).toEqual(['rank_0/net.ckpt', 'rank_1/net.ckpt']);
    const local = await readFile(join(work, 'fixture', 'rank_1', 'net.ckpt'));
    const info = await st.stat('rank_1/net.ckpt');
    expect(info.size).toBe(local.length);
    expect(info.etag).toBe(listed[1].etag);
    expect(info.etag).toMatch(/^[0-9a-f]{32}$/);
    expect(Buffer.from(await st.readAll('rank_1/net.ckpt')).equals(local)).toBe(true);
    const src = await st.open('rank_1/net.ckpt');
    expect(Buffer.from(await src.read(1234, 4321)).equals(local.subarray(1234, 5555))).toBe(true);
    expect(Buffer.from(await src.read(local.length - 1, 1)).equals(local.subarray(local.length - 1))).toBe(true);
    expect(src.bytesRead).toBe(4322);
    expect(st.uriOf('rank_1/net.ckpt')).toBe('s3://ckpt/run1/rank_1/net.ckpt');
    const odd = await openStorage('s3://ckpt/odd keys');
    expect((await odd.list()).map((o) => o.key)).toEqual(['a b+c(1).bin']);
    expect([...(await odd.readAll('a b+c(1).bin'))]).toEqual([1, 2, 3]);
  });

  it('takes credentials and endpoint from a mounted credentials file (INI profile or KEY=value lines)', async () => {
    for (const k of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_SESSION_TOKEN', 'AWS_ENDPOINT_URL', 'AWS_ENDPOINT_URL_S3', 'AWS_PROFILE']) delete process.env[k];
    const envFile = join(work, 'secret.env');
    await writeFile(envFile, `AWS_ACCESS_KEY_ID=${server.accessKey}\nAWS_SECRET_ACCESS_KEY=${server.secretKey}\nAWS_ENDPOINT_URL=${server.endpoint}\n`);
    process.env.AWS_SHARED_CREDENTIALS_FILE = envFile;
    expect((await (await openStorage('s3://ckpt/run1')).list()).length).toBe(2);
    const ini = join(work, 'credentials');
    await writeFile(ini, `[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n[minio]\naws_access_key_id = ${server.accessKey}\naws_secret_access_key = ${server.secretKey}\n`);
    process.env.AWS_SHARED_CREDENTIALS_FILE = ini;
    process.env.AWS_ENDPOINT_URL = server.endpoint;
    process.env.AWS_PROFILE = 'minio';
    expect((await (await openStorage('s3://ckpt/run1')).stat('rank_0/net.ckpt')).size).toBeGreaterThan(0);
    process.env.AWS_PROFILE = 'default';
    await expect((await openStorage('s3://ckpt/run1')).stat('rank_0/net.ckpt')).rejects.toThrow(`s3://ckpt/run1/rank_0/net.ckpt: the S3 credentials were rejected (InvalidAccessKeyId: The Access Key Id you provided does not exist in our records.); credentials from credentials file ${ini} (profile default)`);
  });

  it('follows ListObjectsV2 continuation tokens (page size 2)', async () => {
    const st = await openS3Storage('s3://ckpt/many', { client: clientWith({ endpoint: proxy.url }), pageSize: 2 });
    proxy.reset();
    const keys = (await st.list()).map((o) => o.key);
    expect(keys).toEqual(['f0.bin', 'f1.bin', 'f2.bin', 'f3.bin', 'f4.bin', 'f5.bin', 'f6.bin']);
    expect(proxy.requests()).toBe(4);
  });

  it('writes an object with one PUT (used for the manifest)', async () => {
    const st = await openS3Storage('s3://ckpt/written', { client: server.client() });
    await st.write!('x/y.json', new TextEncoder().encode('{"a":1}'));
    expect(new TextDecoder().decode(await st.readAll('x/y.json'))).toBe('{"a":1}');
  });

  it('names the URI in NoSuchBucket, missing key and out-of-range errors', async () => {
    const c = server.client();
    const nob = await openS3Storage('s3://no-such-bucket/run1', { client: c });
    await expect(nob.stat('rank_0/net.ckpt')).rejects.toMatchObject({ code: 'NoSuchBucket', message: `s3://no-such-bucket/run1/rank_0/net.ckpt: bucket 'no-such-bucket' does not exist at ${server.endpoint} (NoSuchBucket)` });
    await expect(nob.list()).rejects.toMatchObject({ code: 'NoSuchBucket', message: expect.stringMatching(/^s3:\/\/no-such-bucket\/run1: the bucket does not exist at http:\/\/127\.0\.0\.1:\d+ \(NoSuchBucket: The specified bucket does not exist\)$/) });
    await expect(nob.readAll('k')).rejects.toMatchObject({ code: 'NoSuchBucket' });
    const st = await openS3Storage('s3://ckpt/run1', { client: c });
    await expect(st.stat('rank_7/net.ckpt')).rejects.toMatchObject({ code: 'NotFound', message: 's3://ckpt/run1/rank_7/net.ckpt: no such object (NoSuchKey)' });
    await expect(st.readAll('rank_7/net.ckpt')).rejects.toMatchObject({ code: 'NotFound', message: expect.stringMatching(/^s3:\/\/ckpt\/run1\/rank_7\/net\.ckpt: no such object \(NoSuchKey: The specified key does not exist\.\)$/) });
    const src = await st.open('rank_0/net.ckpt');
    await expect(src.read(src.size - 2, 5)).rejects.toMatchObject({ code: 'OutOfRange' });
  });

  it('rejects bad credentials, an unknown key, a bad session token and anonymous access to a private bucket', async () => {
    const wrongSecret = await openS3Storage('s3://ckpt/run1', { client: clientWith({ secretAccessKey: 'not-the-secret' }) });
    const e1 = await wrongSecret.stat('rank_0/net.ckpt').catch((e) => e);
    expect(e1).toMatchObject({ code: 'BadCredentials' });
    expect(e1.message).toMatch(/^s3:\/\/ckpt\/run1\/rank_0\/net\.ckpt: the S3 credentials were rejected \(SignatureDoesNotMatch: .*\); credentials from test$/);
    expect(e1.message).not.toContain('not-the-secret');
    await expect(wrongSecret.list()).rejects.toMatchObject({ code: 'BadCredentials' });

    const unknownKey = await openS3Storage('s3://ckpt/run1', { client: clientWith({ accessKeyId: 'NOSUCHKEY' }) });
    await expect(unknownKey.readAll('rank_0/net.ckpt')).rejects.toMatchObject({ code: 'BadCredentials', message: expect.stringContaining('(InvalidAccessKeyId: ') });

    const badToken = await openS3Storage('s3://ckpt/run1', { client: clientWith({ sessionToken: 'expired-or-forged-token' }) });
    const e3 = await badToken.readAll('rank_0/net.ckpt').catch((e) => e);
    expect(e3.code, e3.message).toBe('BadCredentials');
    expect(e3.message).toMatch(/\((InvalidToken|ExpiredToken|InvalidTokenId|InvalidAccessKeyId): /);

    const anon = await openS3Storage('s3://private', { client: clientWith({ anonymous: true }) });
    await expect(anon.readAll('secret.bin')).rejects.toMatchObject({ code: 'AccessDenied', message: expect.stringMatching(/^s3:\/\/private\/secret\.bin: access denied \(AccessDenied: Access Denied\.?\); credentials from test$/) });
    await expect(anon.stat('secret.bin')).rejects.toMatchObject({ code: 'AccessDenied' });
    await expect(anon.list()).rejects.toMatchObject({ code: 'AccessDenied' });
  });

  it('denies a restricted identity (STS AssumeRole with a session policy) what its policy does not allow', async () => {
    const policy = { Version: '2012-10-17', Statement: [{ Effect: 'Allow', Action: ['s3:GetObject'], Resource: ['arn:aws:s3:::ckpt/run1/*'] }] };
    const body = new URLSearchParams({ Action: 'AssumeRole', Version: '2011-06-15', DurationSeconds: '900', Policy: JSON.stringify(policy) }).toString();
    const signer = new AwsV4Signer({
      method: 'POST', url: `${server.endpoint}/`, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body,
      accessKeyId: server.accessKey, secretAccessKey: server.secretKey, service: 'sts', region: server.region,
    });
    const signed = await signer.sign();
    const res = await fetch(signed.url, { method: 'POST', headers: signed.headers, body, signal: AbortSignal.timeout(10_000) });
    const xml = await res.text();
    expect(res.status, xml).toBe(200);
    const field = (n: string) => new RegExp(`<${n}>([^<]+)</${n}>`).exec(xml)![1];
    const restricted = clientWith({ accessKeyId: field('AccessKeyId'), secretAccessKey: field('SecretAccessKey'), sessionToken: field('SessionToken') });
    const ok = await openS3Storage('s3://ckpt/run1', { client: restricted });
    expect((await ok.readAll('rank_0/net.ckpt')).length).toBe((await readFile(join(work, 'fixture', 'rank_0', 'net.ckpt'))).length);
    const denied = await openS3Storage('s3://private', { client: restricted });
    const err = await denied.readAll('secret.bin').catch((e) => e);
    expect(err.code).toBe('AccessDenied');
    expect(err.message).toMatch(/^s3:\/\/private\/secret\.bin: access denied \(AccessDenied: Access Denied\.?\); credentials from test$/);
    await expect(denied.stat('secret.bin')).rejects.toMatchObject({ code: 'AccessDenied' });
    await expect(ok.list()).rejects.toMatchObject({ code: 'AccessDenied', message: expect.stringContaining('s3://ckpt/run1: access denied') });
  });

  it('reports a closed endpoint after retrying, within a deadline', async () => {
    process.env.SHARDSERVE_STORAGE_RETRIES = '3';
    const port = await freePort();
    const st = await openS3Storage('s3://ckpt/run1', { client: clientWith({ endpoint: `http://127.0.0.1:${port}` }) });
    const t0 = Date.now();
    await expect(st.stat('rank_0/net.ckpt')).rejects.toThrow(`s3://ckpt/run1/rank_0/net.ckpt: cannot connect to http://127.0.0.1:${port} (ECONNREFUSED); is the endpoint URL right and the server up? (gave up after 3 attempts)`);
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('retries a body cut short by a proxy, then fails naming the URI; succeeds when the proxy heals', async () => {
    process.env.SHARDSERVE_STORAGE_RETRIES = '3';
    const st = await openS3Storage('s3://ckpt/run1', { client: clientWith({ endpoint: proxy.url }) });
    const src = await st.open('rank_0/net.ckpt');
    proxy.truncateTo = 1000;
    proxy.reset();
    const err = await src.read(0, 4096).catch((e) => e);
    expect(err.message).toMatch(/^s3:\/\/ckpt\/run1\/rank_0\/net\.ckpt: (connection to http:\/\/127\.0\.0\.1:\d+ (broke|failed) \(.*\)|asked for 4096 bytes at 0, the server sent 1000) \(gave up after 3 attempts\)$/);
    expect(['ConnectionFailed', 'ShortRead']).toContain(err.code);
    expect(proxy.requests()).toBe(3);
    proxy.truncateTo = undefined;
    const local = await readFile(join(work, 'fixture', 'rank_0', 'net.ckpt'));
    expect(Buffer.from(await src.read(0, 4096)).equals(local.subarray(0, 4096))).toBe(true);
  });

  it('detects an object replaced while a pinned reader holds it (ETag If-Match)', async () => {
    const c = server.client();
    await c.putObject('ckpt', 'mutable/obj.bin', 's3://ckpt/mutable/obj.bin', new Uint8Array(100).fill(1));
    const st = await openS3Storage('s3://ckpt/mutable', { client: c });
    const src = await st.open('obj.bin');
    expect((await src.read(0, 10))[0]).toBe(1);
    await c.putObject('ckpt', 'mutable/obj.bin', 's3://ckpt/mutable/obj.bin', new Uint8Array(100).fill(2));
    await expect(src.read(0, 10)).rejects.toMatchObject({ code: 'ObjectChanged', message: 's3://ckpt/mutable/obj.bin: the object changed while it was being read (ETag no longer matches)' });
  });
});

describe('a MinIO killed in the middle of a read', () => {
  it('retries, then fails with a clear error naming the URI, and leaves no output file', async () => {
    const dataDir = join(work, 'data-kill');
    const victim = await startS3Server({ dataDir });
    try {
      const c = victim.client();
      await c.createBucket('killbucket');
      const big = new Uint8Array(48 * 1024 * 1024);
      for (let i = 0; i < big.length; i += 4096) big[i] = (i / 4096) & 0xff;
      await c.putObject('killbucket', 'big.bin', 's3://killbucket/big.bin', big);
      process.env.SHARDSERVE_STORAGE_RETRIES = '3';
      const st = await openS3Storage('s3://killbucket', { client: c });
      const src = await st.open('big.bin');
      const outDir = join(work, 'out-kill');
      await rm(outDir, { recursive: true, force: true });
      await (await import('node:fs/promises')).mkdir(outDir, { recursive: true });
      const out = join(outDir, 'copy.safetensors');
      const writer = await createTensorFileWriter(out, 'safetensors', [{ name: 'blob', dtype: 'U8', shape: [big.length] }]);
      // Kill the server (SIGKILL) as soon as the first part has arrived; the other parts are in flight or pending.
      let killed = false;
      const killing: ByteSource = {
        uri: src.uri,
        size: src.size,
        get bytesRead() { return src.bytesRead; },
        close: () => src.close(),
        async read(o, l) {
          const b = await src.read(o, l);
          if (!killed) {
            killed = true;
            victim.process.kill('SIGKILL');
          }
          return b;
        },
      };
      let delivered = 0;
      const err = await readRanges(killing, [{ offset: 0, length: big.length }], { concurrency: 2, partSize: 1024 * 1024 }, async (r, bytes) => {
        await writer.writeAt('blob', r.offset, bytes);
        delivered++;
      }).then(() => undefined, async (e) => {
        await writer.abort();
        return e;
      });
      expect(killed).toBe(true);
      expect(err).toBeDefined();
      expect(err.message).toMatch(new RegExp(`^s3://killbucket/big\\.bin: (cannot connect to ${victim.endpoint} \\(ECONNREFUSED\\)|connection to ${victim.endpoint} (broke|failed) \\(.*\\)).* \\(gave up after 3 attempts\\)$`));
      expect(delivered).toBe(0);
      expect(await readdir(outDir)).toEqual([]);
    } finally {
      await victim.stop();
    }
  }, 120_000);
});
