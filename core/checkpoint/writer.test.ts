import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { indexCkpt } from '../ckpt/reader.js';
import { ShardserveError } from '../errors.js';
import { indexSafetensors } from '../safetensors/reader.js';
import { openLocalSource } from '../storage/source.js';
import { readTensorBytes } from './read.js';
import type { CheckpointIndex } from './types.js';
import { createTensorFileWriter, type TensorSpec } from './writer.js';

const specs: TensorSpec[] = [
  { name: 'layer.w', dtype: 'F32', shape: [4, 5] },
  { name: 'b', dtype: 'BF16', shape: [3] },
  { name: 'step', dtype: 'I64', shape: [] },
  { name: 'empty', dtype: 'F16', shape: [0, 4] },
  { name: 'mask', dtype: 'BOOL', shape: [7] },
];
/** Deterministic bytes per tensor. */
const dataOf = (s: TensorSpec) => {
  const n = { F32: 4, BF16: 2, I64: 8, F16: 2, BOOL: 1 }[s.dtype as 'F32'] * s.shape.reduce((a, b) => a * b, 1);
  return Buffer.from(Array.from({ length: n }, (_, i) => (i * 7 + s.name.length * 13) & 0xff));
};

async function tmp() {
  return mkdtemp(join(tmpdir(), 'writer-'));
}

/** Write every tensor in small pieces, in a scrambled order. */
async function writeScrambled(w: Awaited<ReturnType<typeof createTensorFileWriter>>, pieceBytes = 3) {
  const jobs: Array<[string, number, Buffer]> = [];
  for (const s of specs) {
    const d = dataOf(s);
    for (let o = 0; o < d.length; o += pieceBytes) jobs.push([s.name, o, d.subarray(o, o + pieceBytes)]);
  }
  jobs.sort((a, b) => ((a[1] * 31 + a[0].length) % 17) - ((b[1] * 31 + b[0].length) % 17));
  await Promise.all(jobs.map(([n, o, b]) => w.writeAt(n, o, b)));
}

async function expectTensors(ix: CheckpointIndex) {
  for (const s of specs) {
    const e = ix.tensors.get(s.name)!;
    expect({ dtype: e.dtype, shape: e.shape }).toEqual({ dtype: s.dtype, shape: s.shape });
    expect(Buffer.from(await readTensorBytes(ix, e, 0, e.byteLength))).toEqual(dataOf(s));
  }
}

describe('createTensorFileWriter .ckpt', () => {
  it.each([
    { name: 'no CRC, one record per tensor', crc: false, chunk: undefined },
    { name: 'CRC trailer, tensors split every 8 bytes', crc: true, chunk: 8 },
  ])('round-trips through indexCkpt: $name', async ({ crc, chunk }) => {
    const path = join(await tmp(), 'out.ckpt');
    const w = await createTensorFileWriter(path, 'mindspore-ckpt', specs, { crc, ckptChunkBytes: chunk, strings: [{ name: 'note', value: 'héllo 𝄞' }] });
    await writeScrambled(w);
    await w.commit();
    const src = await openLocalSource(path);
    expect(src.size).toBe(w.size);
    const ix = await indexCkpt(src, { verifyCrc: true });
    expect(ix.crc).toBe(crc ? 'verified' : 'absent');
    await expectTensors(ix);
    expect(ix.strings.get('note')!.value).toBe('héllo 𝄞');
    if (chunk) expect(ix.tensors.get('layer.w')!.pieces.length).toBe(10);
    await src.close();
  });

  it('writes the reference record bytes for a scalar int32 (modern spelling, no dims)', async () => {
    const path = join(await tmp(), 's.ckpt');
    const w = await createTensorFileWriter(path, 'mindspore-ckpt', [{ name: 'global_step', dtype: 'I32', shape: [] }]);
    await w.writeAt('global_step', 0, Buffer.from([7, 0, 0, 0]));
    await w.commit();
    expect((await readFile(path)).toString('hex')).toBe('0a1c0a0b676c6f62616c5f73746570120d1205496e7433321a0407000000');
  });

  it('writes the CRC as crc32 of everything before the trailer, big-endian in 10 bytes', async () => {
    const path = join(await tmp(), 'c.ckpt');
    const w = await createTensorFileWriter(path, 'mindspore-ckpt', [{ name: 'global_step', dtype: 'I32', shape: [] }], { crc: true });
    await w.writeAt('global_step', 0, Buffer.from([7, 0, 0, 0]));
    await w.commit();
    const bytes = await readFile(path);
    const body = bytes.subarray(0, bytes.length - 17);
    const trailer = Buffer.concat([Buffer.from('crc_num'), Buffer.alloc(6), Buffer.alloc(4)]);
    trailer.writeUInt32BE(crc32(body), 13);
    expect(bytes.subarray(bytes.length - 17)).toEqual(trailer);
  });
});

describe('createTensorFileWriter safetensors', () => {
  it.each([{ crc: false }, { crc: true }])('round-trips through indexSafetensors (crc: $crc)', async ({ crc }) => {
    const path = join(await tmp(), 'out.safetensors');
    const w = await createTensorFileWriter(path, 'safetensors', specs, { crc, metadata: { format: 'ms' } });
    await writeScrambled(w, 5);
    await w.commit();
    const src = await openLocalSource(path);
    const ix = await indexSafetensors(src, { verifyCrc: true });
    expect(ix.crc).toBe(crc ? 'verified' : 'absent');
    expect(ix.metadata.format).toBe('ms');
    await expectTensors(ix);
    const bytes = await readFile(path);
    const n = Number(bytes.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0);
    expect(Object.keys(JSON.parse(bytes.subarray(8, 8 + n).toString()))).toEqual(['__metadata__', 'b', 'empty', 'layer.w', 'mask', 'step']);
    await src.close();
  });
});

describe('createTensorFileWriter safetensors header order', () => {
  it('lists integer-like names in sorted order too, matching the offsets', async () => {
    const path = join(await tmp(), 'n.safetensors');
    const w = await createTensorFileWriter(path, 'safetensors', [{ name: 'b', dtype: 'U8', shape: [1] }, { name: '10', dtype: 'U8', shape: [1] }, { name: '2', dtype: 'U8', shape: [1] }]);
    for (const n of ['b', '10', '2']) await w.writeAt(n, 0, Buffer.from(n.slice(0, 1)));
    await w.commit();
    const bytes = await readFile(path);
    const text = bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString();
    expect(text.trimEnd()).toBe('{"10":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"2":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]}}');
  });
});

describe('createTensorFileWriter errors and atomicity', () => {
  it('leaves no file behind on abort, and only the final file after commit', async () => {
    const dir = await tmp();
    const a = await createTensorFileWriter(join(dir, 'a.ckpt'), 'mindspore-ckpt', specs);
    await a.writeAt('b', 0, Buffer.alloc(2));
    expect((await readdir(dir)).length).toBe(1); // the temp file
    await a.abort();
    expect(await readdir(dir)).toEqual([]);
    const c = await createTensorFileWriter(join(dir, 'c.safetensors'), 'safetensors', [{ name: 'x', dtype: 'U8', shape: [1] }]);
    await c.writeAt('x', 0, Buffer.from([1]));
    await c.commit();
    expect(await readdir(dir)).toEqual(['c.safetensors']);
  });

  it('refuses to commit an incomplete tensor and removes the temp file', async () => {
    const dir = await tmp();
    const w = await createTensorFileWriter(join(dir, 'x.ckpt'), 'mindspore-ckpt', specs);
    await writeScrambled(w);
    const w2 = await createTensorFileWriter(join(dir, 'y.ckpt'), 'mindspore-ckpt', [{ name: 'a', dtype: 'F32', shape: [2] }]);
    await w2.writeAt('a', 0, Buffer.alloc(4));
    await expect(w2.commit()).rejects.toThrow(`${join(dir, 'y.ckpt')}: tensor 'a' has 4 of 8 bytes written`);
    await w.abort();
    expect(await readdir(dir)).toEqual([]);
  });

  const cases: Array<{ name: string; run: (dir: string) => Promise<unknown>; message: string }> = [
    { name: 'unknown tensor', run: async (d) => (await createTensorFileWriter(join(d, 'f.ckpt'), 'mindspore-ckpt', specs)).writeAt('nope', 0, Buffer.alloc(1)), message: "f.ckpt: tensor 'nope' is not among the file's specs" },
    { name: 'write past the end', run: async (d) => (await createTensorFileWriter(join(d, 'f.ckpt'), 'mindspore-ckpt', specs)).writeAt('b', 4, Buffer.alloc(4)), message: "f.ckpt: tensor 'b': write of 4 bytes at 4 is outside its 6 bytes" },
    { name: 'duplicate spec', run: (d) => createTensorFileWriter(join(d, 'f.ckpt'), 'mindspore-ckpt', [specs[0], specs[0]]), message: "f.ckpt: tensor 'layer.w': appears twice" },
    { name: 'negative dim', run: (d) => createTensorFileWriter(join(d, 'f.ckpt'), 'mindspore-ckpt', [{ name: 'a', dtype: 'F32', shape: [-1] }]), message: "f.ckpt: tensor 'a': shape [-1] is not a list of non-negative integers" },
    { name: 'strings in safetensors', run: (d) => createTensorFileWriter(join(d, 'f.safetensors'), 'safetensors', specs, { strings: [{ name: 's', value: 'v' }] }), message: 'f.safetensors: safetensors cannot hold str values (s); use .ckpt' },
    { name: 'missing directory', run: (d) => createTensorFileWriter(join(d, 'no/f.ckpt'), 'mindspore-ckpt', specs), message: 'no/f.ckpt: cannot write (ENOENT' },
  ];
  it.each(cases)('$name', async ({ run, message }) => {
    const dir = await tmp();
    const err: ShardserveError = await run(dir).then(() => undefined, (e) => e);
    expect(err).toBeInstanceOf(ShardserveError);
    expect(err.message.startsWith(`${dir}/${message}`)).toBe(true);
  });
});
