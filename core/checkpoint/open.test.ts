import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ckptRecord, encryptCkpt } from '../ckpt/record-builder.js';
import { MANIFEST_NAME } from '../storage/manifest.js';
import type { ByteSource } from '../storage/source.js';
import { openStorage, type Storage } from '../storage/storage.js';
import { buildManifest, openCheckpointObject, writeManifest } from './open.js';

let dir: string;

function f32(values: number[]): Uint8Array {
  return new Uint8Array(Float32Array.from(values).buffer);
}

function safetensorsBytes(): Uint8Array {
  const header = new TextEncoder().encode(JSON.stringify({ w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }));
  const out = new Uint8Array(8 + header.length + 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(header.length), true);
  out.set(header, 8);
  out.set(f32([1.5, -2]), 8 + header.length);
  return out;
}

/** Wraps a storage so every source read is counted. */
function counting(storage: Storage): Storage & { reads: () => number } {
  let reads = 0;
  return {
    ...storage,
    reads: () => reads,
    async open(key, info) {
      const s = await storage.open(key, info);
      const wrapped: ByteSource = {
        uri: s.uri,
        size: s.size,
        get bytesRead() { return s.bytesRead; },
        read: (o, l) => {
          reads++;
          return s.read(o, l);
        },
        close: () => s.close(),
      };
      return wrapped;
    },
  };
}

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'ss-open-'));
  await mkdir(join(dir, 'rank_0'));
  const records = Array.from({ length: 40 }, (_, i) => ckptRecord(`layer${i}.weight`, 'float32', [2, 2], f32([i, i + 1, i + 2, i + 3])));
  await writeFile(join(dir, 'rank_0', 'net.ckpt'), Buffer.concat(records));
  await writeFile(join(dir, 'rank_0', 'model.safetensors'), safetensorsBytes());
  await writeFile(join(dir, 'rank_0', 'noext-st'), safetensorsBytes());
  await writeFile(join(dir, 'rank_0', 'noext-ckpt'), Buffer.concat(records.slice(0, 2)));
  await writeFile(join(dir, 'rank_0', 'enc.ckpt'), encryptCkpt(Buffer.concat(records.slice(0, 2)), new Uint8Array(16).fill(7), 'AES-GCM'));
  await writeFile(join(dir, 'strategy.ckpt'), new Uint8Array([0x08, 0x01, 0x12, 0x00]));
  await writeFile(join(dir, 'rank_0', 'noext-junk'), new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]));
});
afterAll(() => rm(dir, { recursive: true, force: true }));

describe('openCheckpointObject', () => {
  it('detects the format by extension and by sniffing', async () => {
    const st = await openStorage(dir);
    expect((await openCheckpointObject(st, 'rank_0/net.ckpt')).format).toBe('mindspore-ckpt');
    expect((await openCheckpointObject(st, 'rank_0/model.safetensors')).format).toBe('safetensors');
    expect((await openCheckpointObject(st, 'rank_0/noext-st')).format).toBe('safetensors');
    expect((await openCheckpointObject(st, 'rank_0/noext-ckpt')).tensors.size).toBe(2);
    const enc = await openCheckpointObject(st, 'rank_0/enc.ckpt', { decryption: { key: new Uint8Array(16).fill(7) } });
    expect(enc.encryption).toBe('AES-GCM');
    await expect(openCheckpointObject(st, 'rank_0/noext-junk')).rejects.toThrow(/noext-junk: neither a MindSpore \.ckpt/);
  });

  it('uses a fresh manifest with no header reads, and re-indexes a stale one with a warning', async () => {
    const st = await openStorage(dir);
    const plain = counting(st);
    const direct = await openCheckpointObject(plain, 'rank_0/net.ckpt', { manifest: false });
    expect(plain.reads()).toBeGreaterThan(1);

    const manifest = await buildManifest(st);
    const entry = manifest.files.find((f) => f.key === 'rank_0/net.ckpt')!;
    expect(entry.index?.tensors.length).toBe(40);
    expect(manifest.files.find((f) => f.key === 'rank_0/enc.ckpt')).toMatchObject({ encryption: 'AES-GCM' });
    expect(manifest.files.find((f) => f.key === 'rank_0/enc.ckpt')?.index).toBeUndefined();
    expect(manifest.files.find((f) => f.key === 'strategy.ckpt')?.skipped).toMatch(/strategy\.ckpt: corrupt checkpoint at offset 0/);
    await writeManifest(st, manifest);
    expect(JSON.parse(await readFile(join(dir, MANIFEST_NAME), 'utf8')).files.length).toBe(manifest.files.length);

    const viaManifest = counting(await openStorage(dir));
    const warnings: string[] = [];
    const idx = await openCheckpointObject(viaManifest, 'rank_0/net.ckpt', { warn: (m) => warnings.push(m) });
    expect(viaManifest.reads()).toBe(0);
    expect(warnings).toEqual([]);
    expect([...idx.tensors.values()]).toEqual([...direct.tensors.values()]);
    // Payload reads through the manifest's index give the right bytes.
    const e = idx.tensors.get('layer7.weight')!;
    expect(new Float32Array(Uint8Array.from(await idx.source.read(e.pieces[0].offset, e.byteLength)).buffer)).toEqual(Float32Array.from([7, 8, 9, 10]));

    // Change the file: same size, new mtime → stale; it must be re-indexed from the bytes.
    const changed = Buffer.concat(Array.from({ length: 40 }, (_, i) => ckptRecord(`other${i}.weight`, 'float32', [2, 2], f32([0, 0, 0, i]))));
    await new Promise((r) => setTimeout(r, 20));
    await writeFile(join(dir, 'rank_0', 'net.ckpt'), changed);
    const again = await openCheckpointObject(await openStorage(dir), 'rank_0/net.ckpt', { warn: (m) => warnings.push(m) });
    expect(again.tensors.has('other3.weight')).toBe(true);
    expect(again.tensors.has('layer3.weight')).toBe(false);
    expect(warnings.length).toBe(1);
    expect(warnings[0]).toMatch(/shardserve-index\.json is stale for rank_0\/net\.ckpt/);
  });

  it('ignores a corrupt manifest with a warning naming it', async () => {
    await writeFile(join(dir, MANIFEST_NAME), '{"version": 1, "files": [{"key": "x", "size": -1}]}');
    const warnings: string[] = [];
    const idx = await openCheckpointObject(await openStorage(dir), 'rank_0/model.safetensors', { warn: (m) => warnings.push(m) });
    expect(idx.tensors.get('w')?.shape).toEqual([2]);
    expect(warnings[0]).toMatch(/shardserve-index\.json: files\[0\]\.size must be a non-negative integer/);
  });
});
