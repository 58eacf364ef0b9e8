// http(s):// storage against a local node HTTP server serving a checkpoint directory with Range
// support, plus its faults (Range ignored, bodies cut short, 5xx, a server that never answers).
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildManifest, openCheckpointObject, writeManifest } from '../../core/checkpoint/open.js';
import { readTensorBytes } from '../../core/checkpoint/read.js';
import { readRanges } from '../../core/storage/ranged-read.js';
import { openStorage } from '../../core/storage/storage.js';
import { freePort } from '../harness/ports.js';
import { makeCheckpointDir, serveDir, type FileServer } from './storage-servers.js';

let dir: string;
let srv: FileServer;
const savedEnv = { ...process.env };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ss-http-'));
  await makeCheckpointDir(dir, { ranks: 2, records: 30, elements: 64 });
  await writeFile(join(dir, 'big.bin'), Buffer.alloc(64 * 1024, 7));
  srv = await serveDir(dir);
});
afterAll(async () => {
  await srv?.close();
  await rm(dir, { recursive: true, force: true });
});
afterEach(() => {
  for (const k of Object.keys(srv.faults)) delete srv.faults[k as keyof FileServer['faults']];
  srv.log.length = 0;
  process.env = { ...savedEnv };
});

describe('http(s) storage', () => {
  it('stats, reads ranges and whole objects with exact bytes and accounting', async () => {
    const st = await openStorage(`${srv.url}/`);
    const local = await readFile(join(dir, 'rank_1', 'net.ckpt'));
    const info = await st.stat('rank_1/net.ckpt');
    expect(info.size).toBe(local.length);
    expect(info.etag).toMatch(/^[0-9a-f]{32}$/);
    expect(Buffer.from(await st.readAll('rank_1/net.ckpt')).equals(local)).toBe(true);
    const src = await st.open('rank_1/net.ckpt');
    expect(Buffer.from(await src.read(100, 333)).equals(local.subarray(100, 433))).toBe(true);
    expect(src.bytesRead).toBe(333);
    expect(srv.log.at(-1)).toBe('GET /rank_1/net.ckpt bytes=100-432');
    expect(st.uriOf('rank_1/net.ckpt')).toBe(`${srv.url}/rank_1/net.ckpt`);
  });

  it('cannot list without a manifest, and lists from shardserve-index.json once indexed', async () => {
    const st = await openStorage(srv.url);
    await expect(st.list()).rejects.toThrow(/HTTP cannot list a directory and there is no shardserve-index\.json here; run `shardserve index <dir>`/);
    const localSt = await openStorage(dir);
    await writeManifest(localSt, await buildManifest(localSt));
    try {
      const listed = await (await openStorage(srv.url)).list();
      expect(listed.map((o) => o.key)).toEqual(['big.bin', 'rank_0/net.ckpt', 'rank_1/net.ckpt']);
    } finally {
      await rm(join(dir, 'shardserve-index.json'));
    }
  });

  it('indexes a checkpoint with the manifest in one GET instead of a round trip per record', async () => {
    const plain = await openStorage(srv.url);
    srv.log.length = 0;
    const direct = await openCheckpointObject(plain, 'rank_0/net.ckpt');
    const withoutManifest = srv.log.length;
    expect(withoutManifest).toBeGreaterThan(3);

    const localSt = await openStorage(dir);
    await writeManifest(localSt, await buildManifest(localSt));
    try {
      const st = await openStorage(srv.url);
      srv.log.length = 0;
      const idx = await openCheckpointObject(st, 'rank_0/net.ckpt', { warn: (m) => { throw new Error(m); } });
      // manifest GET (404 first time only if absent) + HEAD for freshness; no header reads.
      expect(srv.log).toEqual(['GET /shardserve-index.json', 'HEAD /rank_0/net.ckpt']);
      expect([...idx.tensors.keys()]).toEqual([...direct.tensors.keys()]);
      const e = idx.tensors.get('net.layer0007.weight')!;
      const bytes = await readTensorBytes(idx, e, 0, e.byteLength);
      expect(new Float32Array(Uint8Array.from(bytes).buffer)[5]).toBe(7 * 1e3 + 5);
    } finally {
      await rm(join(dir, 'shardserve-index.json'));
    }
  });

  it('falls back to one whole read when the server ignores Range on a small object, and refuses on a large one', async () => {
    srv.faults.ignoreRange = true;
    const local = await readFile(join(dir, 'rank_0', 'net.ckpt'));
    const st = await openStorage(srv.url);
    const src = await st.open('rank_0/net.ckpt');
    expect(Buffer.from(await src.read(10, 20)).equals(local.subarray(10, 30))).toBe(true);
    expect(Buffer.from(await src.read(500, 20)).equals(local.subarray(500, 520))).toBe(true);
    expect(src.bytesRead).toBe(local.length);
    expect(srv.log.filter((l) => l.startsWith('GET')).length).toBe(1);

    process.env.SHARDSERVE_HTTP_WHOLE_READ_LIMIT = '1000';
    const big = await st.open('big.bin');
    await expect(big.read(0, 10)).rejects.toThrow(`${srv.url}/big.bin: the server ignores HTTP Range requests (answered 200 to a ranged GET); refusing to download the whole 65536-byte object for each read (limit 1000 bytes, SHARDSERVE_HTTP_WHOLE_READ_LIMIT)`);
  });

  it('retries a body cut short, then fails naming the URI', async () => {
    process.env.SHARDSERVE_STORAGE_RETRIES = '3';
    const st = await openStorage(srv.url);
    const src = await st.open('big.bin');
    srv.faults.truncateTo = 100;
    srv.log.length = 0;
    const err = await src.read(0, 4096).catch((e) => e);
    expect(err.code).toBe('ConnectionFailed');
    expect(err.message).toMatch(new RegExp(`^${srv.url}/big.bin: connection to ${srv.url} (broke|failed) .*\\(gave up after 3 attempts\\)$`));
    expect(srv.log.length).toBe(3);
    srv.faults.truncateTo = undefined;
    expect((await src.read(0, 4096)).length).toBe(4096);
  });

  it('retries 503s with backoff and succeeds; a persistent 500 and a 404 give specific errors', async () => {
    const st = await openStorage(srv.url);
    const src = await st.open('big.bin');
    srv.faults.failNext = { count: 2, status: 503 };
    srv.log.length = 0;
    expect((await src.read(0, 10)).length).toBe(10);
    expect(srv.log.length).toBe(3);

    srv.faults.failNext = { count: 100, status: 500 };
    await expect(src.read(0, 10)).rejects.toThrow(`${srv.url}/big.bin: the server answered HTTP 500 (gave up after 4 attempts)`);
    srv.faults.failNext = undefined;
    await expect(st.stat('rank_9/net.ckpt')).rejects.toMatchObject({ code: 'NotFound', message: `${srv.url}/rank_9/net.ckpt: no such object (HTTP 404)` });
  });

  it('detects an object changed under a pinned read (If-Match) and never hangs on a silent server', async () => {
    const st = await openStorage(srv.url);
    const src = await st.open('big.bin');
    await writeFile(join(dir, 'big.bin'), Buffer.alloc(64 * 1024, 9));
    await expect(src.read(0, 10)).rejects.toMatchObject({ code: 'ObjectChanged' });

    process.env.SHARDSERVE_STORAGE_TIMEOUT_MS = '300';
    process.env.SHARDSERVE_STORAGE_RETRIES = '2';
    const slow = await openStorage(srv.url);
    srv.faults.hang = true;
    const t0 = Date.now();
    await expect(slow.stat('big.bin')).rejects.toThrow(`${srv.url}/big.bin: no complete answer from ${srv.url} within 300 ms (gave up after 2 attempts)`);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('reports a refused connection as a bad endpoint naming the URI', async () => {
    process.env.SHARDSERVE_STORAGE_RETRIES = '2';
    const port = await freePort();
    const st = await openStorage(`http://127.0.0.1:${port}/ckpt`);
    await expect(st.stat('rank_0/net.ckpt')).rejects.toThrow(`http://127.0.0.1:${port}/ckpt/rank_0/net.ckpt: cannot connect to http://127.0.0.1:${port} (ECONNREFUSED); is the endpoint URL right and the server up? (gave up after 2 attempts)`);
  });

  it('readRanges over http gives exact bytes and counts the transfer', async () => {
    const st = await openStorage(srv.url);
    const src = await st.open('rank_1/net.ckpt');
    const local = await readFile(join(dir, 'rank_1', 'net.ckpt'));
    const ranges = [{ offset: 0, length: 10 }, { offset: 20, length: 10 }, { offset: 2000, length: 500 }];
    const res = await readRanges(src, ranges, { coalesceGap: 100 }, (r, b) => {
      expect(Buffer.from(b).equals(local.subarray(r.offset, r.offset + r.length))).toBe(true);
    });
    expect(res).toEqual({ bytesTransferred: 530, requests: 2, bytesRequested: 520, extraBytes: 10 });
    expect(src.bytesRead).toBe(530);
  });
});
