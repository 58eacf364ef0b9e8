import { createDecipheriv } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { readTensorBytes } from '../checkpoint/read.js';
import type { CheckpointIndex, DecryptionOptions } from '../checkpoint/types.js';
import { ShardserveError } from '../errors.js';
import { crc32Fallback, crc32OfZeros, encodeCrcTrailer } from './crc.js';
import { memorySource } from './decrypt.js';
import { ckptRecord, encryptCkpt, mapTensorRecord, utf32le } from './record-builder.js';
import { indexCkpt, type IndexCkptOptions } from './reader.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const file = (...parts: Uint8Array[]) => memorySource('mem/x.ckpt', Buffer.concat(parts));
const index = (bytes: Uint8Array, opts?: IndexCkptOptions) => indexCkpt(memorySource('mem/x.ckpt', bytes), opts);
const f32 = (...v: number[]) => new Uint8Array(Float32Array.from(v).buffer);

async function tensorBytes(ix: CheckpointIndex, name: string): Promise<Buffer> {
  const e = ix.tensors.get(name)!;
  return Buffer.from(await readTensorBytes(ix, e, 0, e.byteLength));
}

// Reference §1.1 byte vectors.
const W_CHUNK = hex('0a20 0a01 77 121b 0802 0803 1207 466c6f61743332 1a0c 0000803f 00000040 00004040');
const GLOBAL_STEP = hex('0a1c 0a0b 676c6f62616c5f73746570 120d 1205 496e743332 1a04 07000000');

describe('indexCkpt on the reference byte vectors', () => {
  it('indexes the ≥2.x scalar int32 global_step (no dims)', async () => {
    const ix = await index(GLOBAL_STEP);
    const e = ix.tensors.get('global_step')!;
    expect(e).toEqual({ name: 'global_step', dtype: 'I32', shape: [], pieces: [{ offset: 26, length: 4 }], byteLength: 4 });
    expect([...(await tensorBytes(ix, 'global_step'))]).toEqual([7, 0, 0, 0]);
    expect(ix.crc).toBe('absent');
    expect(ix.encryption).toBe('none');
  });

  it('joins two adjacent chunks of w [2,3] into one tensor with two pieces', async () => {
    const ix = await index(Buffer.concat([W_CHUNK, W_CHUNK, GLOBAL_STEP]));
    const e = ix.tensors.get('w')!;
    expect(e.shape).toEqual([2, 3]);
    expect(e.pieces).toEqual([{ offset: 22, length: 12 }, { offset: 56, length: 12 }]);
    expect(await tensorBytes(ix, 'w')).toEqual(Buffer.concat([f32(1, 2, 3), f32(1, 2, 3)]));
    // a run crossing the piece boundary
    expect(Buffer.from(await readTensorBytes(ix, e, 8, 8))).toEqual(Buffer.from(f32(3, 1)));
    expect([...ix.tensors.keys()]).toEqual(['w', 'global_step']);
  });

  it('rejects one chunk alone: 12 bytes cannot fill Float32 [2,3]', async () => {
    await expect(index(W_CHUNK)).rejects.toThrow("mem/x.ckpt: parameter 'w': tensor_content is 12 bytes, but Float32 [2,3] needs 24");
  });
});

describe('indexCkpt record decoding', () => {
  const data = f32(1, 2, 3, 4, 5, 6);
  const cases: Array<{ name: string; rec: Uint8Array; shape: number[]; dtype: string }> = [
    { name: 'fields out of order (content first)', rec: ckptRecord('a', 'Float32', [2, 3], data, { order: ['content', 'type', 'dims'] }), shape: [2, 3], dtype: 'F32' },
    { name: 'packed dims', rec: ckptRecord('a', 'Float32', [3, 2], data, { packedDims: true }), shape: [3, 2], dtype: 'F32' },
    { name: 'legacy Uint8 spelling', rec: ckptRecord('a', 'Uint8', [24], new Uint8Array(24)), shape: [24], dtype: 'U8' },
    { name: 'case-insensitive BFLOAT16', rec: ckptRecord('a', 'BFLOAT16', [12], new Uint8Array(24)), shape: [12], dtype: 'BF16' },
    { name: '≤1.x scalar dims=[0]', rec: ckptRecord('a', 'Float64', [0], new Uint8Array(8)), shape: [], dtype: 'F64' },
    { name: 'bool', rec: ckptRecord('a', 'Bool', [2], new Uint8Array([1, 0])), shape: [2], dtype: 'BOOL' },
  ];
  it.each(cases)('$name', async ({ rec, shape, dtype }) => {
    const e = (await index(rec)).tensors.get('a')!;
    expect(e.shape).toEqual(shape);
    expect(e.dtype).toBe(dtype);
  });

  it('keeps str values (UTF-32LE) in index.strings', async () => {
    const ix = await index(Buffer.concat([ckptRecord('note', 'str', [0], utf32le('héllo ✓ 𝄞')), GLOBAL_STEP]));
    expect(ix.strings.get('note')).toEqual({ name: 'note', value: 'héllo ✓ 𝄞' });
    expect(ix.tensors.has('note')).toBe(false);
  });

  it('skips maptensor, unknown types and random_op with a note each; keeps Int4 as packed I8 bytes', async () => {
    const ix = await index(Buffer.concat([
      mapTensorRecord('emb'), ckptRecord('random_op', 'random_op', [], new Uint8Array(5)),
      ckptRecord('q', 'Int4', [2, 2], new Uint8Array(4)), ckptRecord('z', 'Complex64', [1], new Uint8Array(8)), GLOBAL_STEP,
    ]));
    expect([...ix.tensors.keys()]).toEqual(['q', 'global_step']);
    expect(ix.tensors.get('q')).toMatchObject({ dtype: 'I8', shape: [2, 2], byteLength: 4 });
    expect(ix.notes).toEqual([
      "skipped 'emb': maptensor (MapParameter) values are not supported",
      "skipped 'random_op': unknown tensor_type 'random_op'",
      "tensor 'q' is Int4 (qint4x2, two values per byte) stored as I8",
      "skipped 'z': unknown tensor_type 'Complex64'",
    ]);
  });

  it('reads a header whose parameter name is longer than its window', async () => {
    const long = 'p.'.repeat(3000);
    const ix = await index(Buffer.concat([ckptRecord(long, 'Float32', [2], f32(1, 2)), GLOBAL_STEP]));
    expect(await tensorBytes(ix, long)).toEqual(Buffer.from(f32(1, 2)));
  });

  it('parses the same from synchronous and asynchronous reads, headers running past their first window included', async () => {
    const payload = new Uint8Array(64 * 1024);
    const bytes = Buffer.concat([
      ckptRecord('p.'.repeat(3000), 'Float32', [128, 128], payload), // a name longer than a window
      ckptRecord('late', 'Float32', [128, 128], payload, { order: ['content', 'type', 'dims'] }), // type and dims after the payload
      ckptRecord('w', 'Float16', [4, 2], new Uint8Array(16), { packedDims: true }),
      GLOBAL_STEP,
    ]);
    const asyncOnly = await indexCkpt(memorySource('mem/x.ckpt', bytes));
    let reads = 0;
    let syncReads = 0;
    const inner = memorySource('mem/x.ckpt', bytes);
    const withSync = {
      uri: inner.uri, size: inner.size, get bytesRead() { return inner.bytesRead; }, close: () => inner.close(),
      read: (offset: number, length: number) => (reads++, inner.read(offset, length)),
      readSync: (offset: number, length: number) => (syncReads++, bytes.slice(offset, offset + length)),
    };
    const sync = await indexCkpt(withSync);
    expect(sync.tensors).toEqual(asyncOnly.tensors);
    expect([...sync.tensors.values()].map((t) => [t.name.slice(0, 4), t.dtype, t.shape])).toEqual([
      ['p.p.', 'F32', [128, 128]], ['late', 'F32', [128, 128]], ['w', 'F16', [4, 2]], ['glob', 'I32', []],
    ]);
    expect(reads).toBe(2); // only the trailer and cipher-magic probes; every header window was read synchronously
    // The long name and the fields after the payload each need a second window; the last two
    // records are small enough to share one.
    expect(syncReads).toBe(5);
  });
});

describe('indexCkpt reads only record headers', () => {
  it('fetches one ≤1 KiB window per record of a 200 × 64 KiB file, never the payloads', async () => {
    const payload = new Uint8Array(64 * 1024);
    const records = Array.from({ length: 200 }, (_, i) => ckptRecord(`layer${i}.weight`, 'Float32', [128, 128], payload));
    const src = file(...records);
    const ix = await indexCkpt(src);
    expect(ix.tensors.size).toBe(200);
    expect(src.bytesRead).toBeLessThanOrEqual(200 * 1024 + 17 + 4); // + the trailer probe and the cipher-magic probe
    expect(src.bytesRead / src.size).toBeLessThan(0.016);
  });

  it('reads runs of small records many to a window, walking or reading ahead', async () => {
    // 500 norm-sized records (2 KiB payloads) between two large ones.
    const big = ckptRecord('embed', 'Float32', [128, 128], new Uint8Array(64 * 1024));
    const small = Array.from({ length: 500 }, (_, i) => ckptRecord(`layer${i}.norm`, 'Float32', [512], new Uint8Array(2048).fill(i)));
    const bytes = Buffer.concat([big, ...small, ckptRecord('head', 'Float32', [128, 128], new Uint8Array(64 * 1024))]);
    const expected = await indexCkpt(memorySource('mem/x.ckpt', bytes));
    expect(expected.tensors.size).toBe(502);
    // Walking: after the first small record, each window is 64 KiB, so ~30 records to a read.
    let syncReads = 0;
    const inner = memorySource('mem/x.ckpt', bytes);
    const walked = await indexCkpt(Object.assign(inner, { readSync: (offset: number, length: number) => (syncReads++, bytes.slice(offset, offset + length)) }));
    expect(walked.tensors).toEqual(expected.tensors);
    expect(syncReads).toBeLessThanOrEqual(2 + Math.ceil((500 * 2100) / (64 * 1024)) + 1);
    // Reading ahead: starts less than 64 KiB apart share one read.
    const starts = [0, ...[...expected.tensors.values()].map((t) => t.pieces[0].offset + t.pieces[0].length)].slice(0, -1);
    let reads = 0;
    const counted = memorySource('mem/x.ckpt', bytes);
    const ahead = await indexCkpt({ uri: counted.uri, size: counted.size, get bytesRead() { return counted.bytesRead; }, close: () => counted.close(), read: (o: number, l: number) => (reads++, counted.read(o, l)) }, { prefetchRecords: starts });
    expect(ahead.tensors).toEqual(expected.tensors);
    expect(reads).toBeLessThanOrEqual(2 + 2 + Math.ceil((500 * 2100) / (64 * 1024)) + 1); // probes, the two large records, the runs
  });

  it('with prefetchRecords, asks for every header window at once; a wrong or partial guess costs spare reads, never a different index', async () => {
    const payload = new Uint8Array(64 * 1024);
    const records = Array.from({ length: 40 }, (_, i) => ckptRecord(`layer${i}.weight`, 'Float32', [128, 128], payload.fill(i)));
    // A source whose reads all take a turn of the event loop, counting how many are in flight at once.
    const inner = file(...records);
    let inFlight = 0;
    let most = 0;
    let reads = 0;
    const slow = { uri: inner.uri, size: inner.size, get bytesRead() { return inner.bytesRead; }, close: () => inner.close(), read: async (offset: number, length: number) => {
      reads++;
      most = Math.max(most, ++inFlight);
      await new Promise((r) => setImmediate(r));
      inFlight--;
      return inner.read(offset, length);
    } };
    const plain = await indexCkpt(slow);
    expect(most).toBe(1); // one header after the other
    const starts = [0, ...[...plain.tensors.values()].map((t) => t.pieces[0].offset + t.pieces[0].length)];
    most = 0;
    reads = 0;
    const ahead = await indexCkpt(slow, { prefetchRecords: starts });
    expect(most).toBeGreaterThanOrEqual(40); // every record's window requested before the walk needs it
    expect(reads).toBe(40 + 2); // the windows, plus the trailer and cipher-magic probes: none read twice
    expect(ahead.tensors).toEqual(plain.tensors);
    // A guess from a file laid out differently: every offset off by 3 bytes, half of them missing.
    reads = 0;
    const wrong = await indexCkpt(slow, { prefetchRecords: starts.filter((_, i) => i % 2).map((o) => o + 3) });
    expect(wrong.tensors).toEqual(plain.tensors);
    expect(reads).toBe(20 + 40 + 2);
  });
});

describe('crc32Fallback (Node < 20.15)', () => {
  it('equals zlib', () => {
    const data = Buffer.from(Array.from({ length: 1000 }, (_, i) => (i * 31) & 0xff));
    expect(crc32Fallback('abc')).toBe(0x352441c2);
    expect(crc32Fallback(data, 12345)).toBe(crc32(data, 12345));
  });
});

describe('crc32OfZeros', () => {
  it.each([0, 1, 5, 255, 4096, 100_003])('equals zlib over %i zero bytes', (n) => {
    const start = crc32('abc');
    expect(crc32OfZeros(start, BigInt(n))).toBe(crc32(Buffer.alloc(n), start));
  });
});

describe('indexCkpt CRC trailer', () => {
  const body = Buffer.concat([W_CHUNK, W_CHUNK, GLOBAL_STEP]);
  const withTrailer = Buffer.concat([body, encodeCrcTrailer(crc32(body))]);
  it('strips the trailer without checking by default', async () => {
    const ix = await index(withTrailer);
    expect(ix.crc).toBe('not-checked');
    expect(ix.tensors.size).toBe(2);
  });
  it('verifies the trailer when asked', async () => {
    expect((await index(withTrailer, { verifyCrc: true })).crc).toBe('verified');
  });
  it('fails on a CRC mismatch when asked', async () => {
    const bad = Buffer.from(withTrailer);
    bad[30] ^= 1;
    await expect(index(bad, { verifyCrc: true })).rejects.toThrow(`mem/x.ckpt: CRC check failed: trailer says ${crc32(body)}, the data has ${crc32(bad.subarray(0, body.length))}`);
  });
});

describe('indexCkpt decryption', () => {
  const plain = Buffer.concat([W_CHUNK, W_CHUNK, ckptRecord('b', 'Float16', [3], new Uint8Array([1, 2, 3, 4, 5, 6])), GLOBAL_STEP]);
  const key16 = Buffer.from('0123456789abcdef');
  const key32 = Buffer.from('0123456789abcdef0123456789abcdef');
  const modes: Array<{ name: string; mode: 'AES-GCM' | 'AES-CBC' | 'SM4-CBC'; key: Buffer; legacyGcm?: boolean; gcmIvLength?: 12 | 16 }> = [
    { name: 'AES-GCM (tag) 256-bit', mode: 'AES-GCM', key: key32 },
    { name: 'AES-GCM (tag) with all 16 IV bytes used', mode: 'AES-GCM', key: key16, gcmIvLength: 16 },
    { name: 'AES-GCM legacy (no tag) 128-bit', mode: 'AES-GCM', key: key16, legacyGcm: true },
    { name: 'AES-GCM legacy (no tag) with all 16 IV bytes used', mode: 'AES-GCM', key: key16, legacyGcm: true, gcmIvLength: 16 },
    { name: 'AES-CBC 128-bit', mode: 'AES-CBC', key: key16 },
    { name: 'AES-CBC 192-bit', mode: 'AES-CBC', key: Buffer.alloc(24, 7) },
    { name: 'SM4-CBC', mode: 'SM4-CBC', key: key16 },
  ];
  it.each(modes)('decrypts $name in 40-byte segments into a view', async ({ mode, key, legacyGcm, gcmIvLength }) => {
    const enc = encryptCkpt(plain, key, mode, { blockSize: 40, legacyGcm, gcmIvLength });
    const ix = await index(enc, { decryption: { key } });
    expect(ix.encryption).toBe(mode);
    expect(ix.source.size).toBe(plain.length);
    expect(await tensorBytes(ix, 'w')).toEqual(Buffer.concat([f32(1, 2, 3), f32(1, 2, 3)]));
    expect([...(await tensorBytes(ix, 'b'))]).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it('legacy GCM: a wrong IV reading whose first byte happens to be 0x0A does not win', async () => {
    // A file written with all 16 IV bytes, and an IV under which the 12-byte reading of the first
    // segment also begins with 0x0A (about one IV in 256): the first byte alone would pick that reading.
    const segmentCipherAt = 4 + 4 + 4 + 16 + 4; // legacy: magic, L, iv_len, iv, cipher_len
    let enc: Uint8Array | undefined;
    for (let k = 0; k < 4096 && !enc; k++) {
      const iv = Buffer.alloc(16);
      iv.writeUInt32LE(k, 0);
      const candidate = encryptCkpt(plain, key16, 'AES-GCM', { blockSize: 40, legacyGcm: true, gcmIvLength: 16, iv });
      const twelve = createDecipheriv('aes-128-gcm', key16, iv.subarray(0, 12)).update(candidate.subarray(segmentCipherAt, segmentCipherAt + 1));
      if (twelve[0] === 0x0a) enc = candidate;
    }
    expect(enc).toBeDefined();
    const ix = await index(enc!, { decryption: { key: key16 } });
    expect(await tensorBytes(ix, 'w')).toEqual(Buffer.concat([f32(1, 2, 3), f32(1, 2, 3)]));
    expect([...(await tensorBytes(ix, 'b'))]).toEqual([1, 2, 3, 4, 5, 6]);
  });

  it.each(modes)('$name: the view reads any range exactly, and decrypts only the segments it touches', async ({ mode, key, legacyGcm, gcmIvLength }) => {
    // A 192 KiB tensor spread over 48 segments of 4 KiB, then a small one.
    const big = new Uint8Array(192 * 1024).map((_, i) => (i * 7 + 3) & 0xff);
    const plain2 = Buffer.concat([ckptRecord('big', 'UInt8', [big.length], big), ckptRecord('b', 'Float16', [3], new Uint8Array([1, 2, 3, 4, 5, 6]))]);
    const enc = encryptCkpt(plain2, key, mode, { blockSize: 4096, legacyGcm, gcmIvLength });
    const inner = memorySource('mem/x.ckpt', enc);
    let cipherRead = 0;
    const counting = { ...inner, get bytesRead() { return inner.bytesRead; }, read: (o: number, n: number) => ((cipherRead += n), inner.read(o, n)) };
    const ix = await indexCkpt(counting, { decryption: { key } });
    expect([...(await tensorBytes(ix, 'b'))]).toEqual([1, 2, 3, 4, 5, 6]);
    // Headers and the small tensor live in the first and last few segments: the rest stays encrypted.
    expect(cipherRead).toBeLessThan(enc.length / 4);
    expect(Buffer.from(await tensorBytes(ix, 'big'))).toEqual(Buffer.from(big));
    let seed = 11;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    for (let i = 0; i < 200; i++) {
      const offset = rnd(plain2.length);
      const length = rnd(Math.min(plain2.length - offset, 20_000) + 1);
      expect(Buffer.from(await ix.source.read(offset, length))).toEqual(plain2.subarray(offset, offset + length));
    }
    await expect(ix.source.read(plain2.length - 1, 2)).rejects.toThrow(`mem/x.ckpt: read of 2 bytes at ${plain2.length - 1} is past the end of the decrypted data (size ${plain2.length})`);
  });

  const gcm = encryptCkpt(plain, key16, 'AES-GCM', { blockSize: 40 });
  const tampered = Buffer.from(gcm);
  tampered[tampered.length - 1] ^= 1;
  const errors: Array<{ name: string; bytes: Uint8Array; dec?: DecryptionOptions; message: string }> = [
    { name: 'missing key', bytes: gcm, message: 'mem/x.ckpt: checkpoint is encrypted (AES-GCM); a decryption key is required' },
    { name: 'wrong key', bytes: gcm, dec: { key: Buffer.from('fedcba9876543210') }, message: 'mem/x.ckpt: encrypted segment at offset 0: AES-GCM tag mismatch (wrong key or corrupted file)' },
    { name: 'tampered ciphertext', bytes: tampered, dec: { key: key16 }, message: 'AES-GCM tag mismatch (wrong key or corrupted file)' },
    { name: 'bad key length', bytes: gcm, dec: { key: Buffer.alloc(10) }, message: 'mem/x.ckpt: AES-GCM needs a 16, 24 or 32-byte key, got 10 bytes' },
    { name: 'SM4 with a 32-byte key', bytes: encryptCkpt(plain, key16, 'SM4-CBC'), dec: { key: key32 }, message: 'mem/x.ckpt: SM4-CBC needs a 16-byte key, got 32 bytes' },
    { name: 'mode mismatch', bytes: gcm, dec: { key: key16, mode: 'AES-CBC' }, message: 'mem/x.ckpt: checkpoint is encrypted with AES-GCM, but AES-CBC was given' },
    // A fixed IV: with a random one, the wrong key yields valid padding about once in 256 runs.
    { name: 'CBC wrong key (bad padding)', bytes: encryptCkpt(plain, key16, 'AES-CBC', { iv: Buffer.alloc(16, 3) }), dec: { key: Buffer.from('fedcba9876543210') }, message: 'mem/x.ckpt: encrypted segment at offset 0: AES-CBC bad padding (wrong key or corrupted file)' },
    { name: 'truncated segment', bytes: gcm.subarray(0, gcm.length - 3), dec: { key: key16 }, message: 'inconsistent or truncated header' },
  ];
  it.each(errors)('$name → $message', async ({ bytes, dec, message }) => {
    const err = await index(bytes, { decryption: dec }).catch((e) => e);
    expect(err).toBeInstanceOf(ShardserveError);
    expect(err.message).toContain(message);
    expect(err.file).toBe('mem/x.ckpt');
  });
});

describe('indexCkpt bad input', () => {
  const rec = ckptRecord('a', 'Float32', [2], f32(1, 2));
  const cases: Array<{ name: string; bytes: Uint8Array; message: string; param?: string }> = [
    { name: 'empty file', bytes: new Uint8Array(0), message: 'mem/x.ckpt: checkpoint file is empty' },
    { name: 'truncated record', bytes: rec.subarray(0, rec.length - 1), message: 'mem/x.ckpt: corrupt checkpoint at offset 1: length-delimited field runs past the end of its message' },
    { name: 'not a record', bytes: Buffer.from('hello world'), message: 'mem/x.ckpt: corrupt checkpoint at offset 0: expected a Checkpoint.value record (field 1, length-delimited), found field 13 wire type 0' },
    { name: 'non-adjacent repeat', bytes: Buffer.concat([rec, GLOBAL_STEP, rec]), param: 'a',
      message: "mem/x.ckpt: parameter 'a': appears again at offset 58 after other parameters (only adjacent chunks of one parameter may repeat its name)" },
    { name: 'chunks with different dims', bytes: Buffer.concat([ckptRecord('a', 'Float32', [2], f32(1)), ckptRecord('a', 'Float32', [1], f32(2))]), param: 'a',
      message: "mem/x.ckpt: parameter 'a': record at offset 24 (Float32 [1]) disagrees with the earlier chunk (Float32 [2])" },
    { name: 'negative dim (10-byte varint)', bytes: hex('0a1b 0a01 61 1216 08ffffffffffffffffff01 1207 466c6f61743332 1a00'),
      message: "mem/x.ckpt: corrupt checkpoint at offset 8: dimension -1 of 'a' is negative" },
    { name: 'missing tensor_type', bytes: hex('0a09 0a01 61 1204 0802 1a00'), message: "mem/x.ckpt: corrupt checkpoint at offset 7: tensor of 'a' has no tensor_type" },
    { name: 'bad str length', bytes: ckptRecord('s', 'str', [0], new Uint8Array(3)), param: 's', message: "mem/x.ckpt: parameter 's': str value is 3 bytes, not a multiple of 4 (UTF-32)" },
  ];
  it.each(cases)('$name', async ({ bytes, message, param }) => {
    const err = await index(bytes).catch((e) => e);
    expect(err).toBeInstanceOf(ShardserveError);
    expect(err.message).toBe(message);
    if (param) expect(err.param).toBe(param);
  });

  it('names the file of a ByteSource', async () => {
    await expect(indexCkpt(file(Buffer.from('xx')))).rejects.toThrow(/^mem\/x\.ckpt: corrupt checkpoint/);
  });
});
