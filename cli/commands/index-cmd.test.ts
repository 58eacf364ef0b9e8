import { mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { makeCheckpointDir } from '../../test/integration/storage-servers.js';
import { main } from '../main.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ss-index-'));
  await makeCheckpointDir(dir, { ranks: 2, records: 5, elements: 8 });
  await writeFile(join(dir, 'strategy.ckpt'), new Uint8Array([0x08, 0x01]));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

async function capture(argv: string[]) {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => ((out += String(s)), true));
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => ((err += String(s)), true));
  try {
    const code = await main(argv);
    return { code, out, err };
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
}

describe('shardserve index', () => {
  it('writes shardserve-index.json atomically with every file and the record index', async () => {
    const r = await capture(['index', dir]);
    expect(r.code).toBe(0);
    expect(r.out).toBe(`wrote ${join(dir, 'shardserve-index.json')}: 3 files, 2 checkpoints indexed (10 tensors)\n`);
    expect(r.err).toContain('[1/3] rank_0/net.ckpt: mindspore-ckpt, 5 tensors');
    expect(r.err).toContain('[3/3] strategy.ckpt: listed, not indexed (');
    const m = JSON.parse(await readFile(join(dir, 'shardserve-index.json'), 'utf8'));
    expect(m.version).toBe(1);
    expect(m.files.map((f: { key: string }) => f.key)).toEqual(['rank_0/net.ckpt', 'rank_1/net.ckpt', 'strategy.ckpt']);
    expect(m.files[0].index.tensors[0]).toMatchObject({ name: 'net.layer0000.weight', dtype: 'F32', shape: [8] });
    expect((await readdir(dir)).filter((n) => n.includes('.tmp'))).toEqual([]);
    // Re-indexing does not list the manifest itself.
    const again = await capture(['index', dir, '--json']);
    expect(JSON.parse(again.out)).toMatchObject({ files: 3, indexed: 2, tensors: 10 });
  });

  it('refuses http(s) locations and bad usage with one-line errors', async () => {
    const r = await capture(['index', 'http://127.0.0.1:1/ckpt']);
    expect(r.code).toBe(1);
    expect(r.err).toBe('shardserve index: http://127.0.0.1:1/ckpt: cannot write shardserve-index.json over http(s); index the served directory (or the s3:// location) instead\n');
    const u = await capture(['index']);
    expect(u.code).toBe(2);
    expect(u.err).toBe('shardserve index: expected exactly one <dir|uri>, got 0\n');
    const missing = await capture(['index', join(dir, 'nope')]);
    expect(missing.code).toBe(1);
    expect(missing.err).toBe(`shardserve index: ${join(dir, 'nope')}: no such file or directory\n`);
  });
});
