import { mkdtemp, mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { readTensorBytes } from '../checkpoint/read.js';
import { memorySource } from '../ckpt/decrypt.js';
import { ShardserveError } from '../errors.js';
import { openStorage } from '../storage/storage.js';
import { indexSafetensors, readUnifiedSafetensorsDir } from './reader.js';

/** A safetensors file from a header object and a buffer (header padded to 8 bytes with spaces). */
function safetensors(header: unknown, buffer: Uint8Array, opts: { headerLength?: bigint } = {}): Buffer {
  let json = JSON.stringify(header);
  while ((8 + Buffer.byteLength(json)) % 8) json += ' ';
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(opts.headerLength ?? BigInt(Buffer.byteLength(json)));
  return Buffer.concat([n, Buffer.from(json), buffer]);
}
const index = (bytes: Uint8Array, verifyCrc = false) => indexSafetensors(memorySource('mem/m.safetensors', bytes), { verifyCrc });

const A = Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]); // F32 [2]
const B = Buffer.from([9, 10]); // BF16 [1]
const good = { __metadata__: { format: 'ms' }, a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'BF16', shape: [1], data_offsets: [8, 10] } };

describe('indexSafetensors', () => {
  it('indexes a valid file and keeps __metadata__', async () => {
    const bytes = safetensors(good, Buffer.concat([A, B]));
    const ix = await index(bytes);
    const start = bytes.length - 10;
    expect(ix.metadata).toEqual({ format: 'ms' });
    expect(ix.tensors.get('a')).toEqual({ name: 'a', dtype: 'F32', shape: [2], pieces: [{ offset: start, length: 8 }], byteLength: 8 });
    expect([...(await readTensorBytes(ix, ix.tensors.get('b')!, 0, 2))]).toEqual([9, 10]);
    expect(ix.crc).toBe('absent');
  });

  it('verifies MindSpore crc_num (CRC-32 over name then bytes, names sorted)', async () => {
    const c = crc32(B, crc32('b', crc32(A, crc32('a'))));
    const ix = await index(safetensors({ ...good, __metadata__: { format: 'ms', crc_num: String(c) } }, Buffer.concat([A, B])), true);
    expect(ix.crc).toBe('verified');
    await expect(index(safetensors({ ...good, __metadata__: { crc_num: String(c + 1) } }, Buffer.concat([A, B])), true))
      .rejects.toThrow(`mem/m.safetensors: CRC check failed: crc_num says ${c + 1}, the data has ${c}`);
  });

  it('follows MindSpore for integer scalars: bytes(0-d int array) is `value` zero bytes', async () => {
    const step = Buffer.alloc(8);
    step.writeBigInt64LE(5n);
    const header = { __metadata__: { format: 'ms', crc_num: '' }, s: { dtype: 'I64', shape: [], data_offsets: [0, 8] }, a: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } };
    const c = crc32(Buffer.alloc(5), crc32('s', crc32(A, crc32('a'))));
    header.__metadata__.crc_num = String(c);
    expect((await index(safetensors(header, Buffer.concat([step, A])), true)).crc).toBe('verified');
  });

  it('notes per-tensor Int4 metadata', async () => {
    const ix = await index(safetensors({ __metadata__: { format: 'ms', q: 'Int4' }, q: { dtype: 'I8', shape: [2], data_offsets: [0, 2] } }, Buffer.from([1, 2])));
    expect(ix.notes).toEqual(["tensor 'q' is Int4 (qint4x2, two values per byte) stored as I8"]);
  });

  const AB = Buffer.concat([A, B]);
  const cases: Array<{ name: string; bytes: Uint8Array; message: string }> = [
    { name: 'too short', bytes: Buffer.alloc(5), message: 'mem/m.safetensors: file is 5 bytes, too short for a safetensors header' },
    { name: 'header over 100 MB', bytes: safetensors(good, AB, { headerLength: 100_000_001n }), message: 'mem/m.safetensors: header length 100000001 exceeds 100000000 bytes' },
    { name: 'header past the end', bytes: safetensors(good, AB, { headerLength: 5000n }), message: 'mem/m.safetensors: header length 5000 runs past the end of the file (size 162)' },
    { name: 'header not an object', bytes: safetensors([1], Buffer.alloc(0)), message: 'mem/m.safetensors: header is not a JSON object' },
    { name: 'unknown dtype', bytes: safetensors({ a: { dtype: 'F8_E4M3', shape: [1], data_offsets: [0, 1] } }, Buffer.alloc(1)),
      message: "mem/m.safetensors: tensor 'a': unknown dtype \"F8_E4M3\" (expected one of BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64)" },
    { name: 'size mismatch', bytes: safetensors({ a: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, A),
      message: "mem/m.safetensors: tensor 'a': data_offsets span 8 bytes, but F32 [3] needs 12" },
    { name: 'hole between tensors', bytes: safetensors({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'BF16', shape: [1], data_offsets: [9, 11] } }, Buffer.alloc(11)),
      message: "mem/m.safetensors: tensor 'b': data_offsets begin at 9, expected 8 (tensors must be contiguous, without holes or overlap)" },
    { name: 'trailing bytes', bytes: safetensors(good, Buffer.concat([AB, Buffer.alloc(3)])), message: 'mem/m.safetensors: byte buffer ends at 162, but the file is 165 bytes' },
    { name: 'truncated buffer', bytes: safetensors(good, AB).subarray(0, 159), message: 'mem/m.safetensors: byte buffer ends at 162, but the file is 159 bytes' },
    { name: 'non-string metadata', bytes: safetensors({ __metadata__: { n: 1 } }, Buffer.alloc(0)), message: "mem/m.safetensors: __metadata__['n'] is not a string" },
    { name: 'bad offsets', bytes: safetensors({ a: { dtype: 'U8', shape: [1], data_offsets: [1, 0] } }, Buffer.alloc(1)),
      message: "mem/m.safetensors: tensor 'a': data_offsets is not [begin, end] with 0 ≤ begin ≤ end" },
  ];
  it.each(cases)('rejects $name', async ({ bytes, message }) => {
    const err = await index(bytes).catch((e) => e);
    expect(err).toBeInstanceOf(ShardserveError);
    expect(err.message).toBe(message);
    expect(err.file).toBe('mem/m.safetensors');
  });

  it('rejects a header that is not JSON', async () => {
    const err = await index(safetensors({}, Buffer.alloc(0)).fill(0x7b, 8)).catch((e) => e);
    expect(err.message).toMatch(/^mem\/m\.safetensors: header is not valid JSON \(/);
  });
});

describe('readUnifiedSafetensorsDir', () => {
  async function dirWith(files: Record<string, string | Uint8Array>) {
    const root = await mkdtemp(join(tmpdir(), 'unified-'));
    for (const [k, v] of Object.entries(files)) {
      await mkdir(join(root, k, '..'), { recursive: true });
      await writeFile(join(root, k), v);
    }
    return { root, storage: await openStorage(root) };
  }
  it('maps every tensor to its part file', async () => {
    const { storage } = await dirWith({
      'u/param_name_map.json': JSON.stringify({ metadata: { total_size: 30 }, weight_map: { a: 'part0.safetensors', b: 'part1.safetensors', c: 'part0.safetensors' } }),
      'u/part0.safetensors': '', 'u/part1.safetensors': '', 'u/hyper_param.safetensors': '',
    });
    const u = await readUnifiedSafetensorsDir(storage, 'u');
    expect(u).toEqual({ files: ['u/part0.safetensors', 'u/part1.safetensors'], weightMap: new Map([['a', 'u/part0.safetensors'], ['b', 'u/part1.safetensors'], ['c', 'u/part0.safetensors']]), totalSize: 30, hyperParamFile: 'u/hyper_param.safetensors' });
  });
  it('takes a single file when there is no map', async () => {
    const { storage } = await dirWith({ 'only.safetensors': '' });
    expect(await readUnifiedSafetensorsDir(storage)).toEqual({ files: ['only.safetensors'], weightMap: new Map(), hyperParamFile: undefined });
  });
  it('rejects a map naming a missing part', async () => {
    const { storage, root } = await dirWith({ 'param_name_map.json': JSON.stringify({ weight_map: { a: 'part9.safetensors' } }) });
    await expect(readUnifiedSafetensorsDir(storage)).rejects.toThrow(`${join(root, 'param_name_map.json')}: weight_map['a'] names part9.safetensors, which is not in the directory`);
  });
});
