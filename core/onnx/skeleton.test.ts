import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { memorySource } from '../ckpt/decrypt.js';
import { WireWriter } from '../ckpt/wire.js';
import { ShardserveError } from '../errors.js';
import { GraphBuilder, seededFloats } from './graph-builder.js';
import { type OnnxModel, parseOnnx, serializeOnnx } from './model.js';
import { mlpNetwork, transformerNetwork } from './sample-networks.js';
import { LOCAL_TUNING, REMOTE_TUNING, readOnnxSkeleton } from './skeleton.js';

const LAZY_BYTES = LOCAL_TUNING.lazyBytes;

/** Bytes as a local file reads them (synchronous reads too: the skeleton then reads as from a local file). */
function localSource(bytes: Uint8Array, reads = { count: 0 }) {
  const s = memorySource('mem/net.onnx', bytes);
  const read = s.read.bind(s);
  return Object.assign(s, {
    read: (offset: number, length: number) => (reads.count++, read(offset, length)),
    readSync: (offset: number, length: number) => bytes.slice(offset, offset + length),
  });
}

const EXAMPLE = fileURLToPath(new URL('../../examples/model/net.onnx', import.meta.url));

/** Models equal, weights compared as bytes (deep equality on large typed arrays is slow). */
function expectSameModel(got: OnnxModel, want: OnnxModel): void {
  const strip = (m: OnnxModel) => ({ ...m, graph: { ...m.graph, initializer: m.graph!.initializer!.map(({ rawData: _r, ...t }) => t) } });
  expect(strip(got)).toEqual(strip(want));
  const raw = (m: OnnxModel) => m.graph!.initializer!.map((t) => (t.rawData ? Buffer.from(t.rawData.buffer, t.rawData.byteOffset, t.rawData.byteLength).toString('base64') : undefined));
  expect(raw(got)).toEqual(raw(want));
}

describe('readOnnxSkeleton', () => {
  it('skips the raw_data of large weights, reads everything else, and fills what is asked for', async () => {
    const net = mlpNetwork([16, 256, 256, 256, 4]); // three 256 KiB-or-larger weights, small biases
    const bytes = serializeOnnx(net.model);
    const full = parseOnnx(bytes);
    const source = localSource(bytes);
    const sk = await readOnnxSkeleton(source);
    const big = full.graph!.initializer!.filter((t) => t.rawData!.byteLength >= LAZY_BYTES).map((t) => t.name!);
    expect(big.length).toBe(2); // [256,256] twice; [16,256] and [256,4] are under 64 KiB
    expect([...sk.skipped.keys()]).toEqual(big);
    const skippedBytes = [...sk.skipped.values()].reduce((a, r) => a + r.length, 0);
    // Past a skipped weight, a small window (the next header); at most one larger window runs into one.
    expect(source.bytesRead).toBeLessThan(bytes.byteLength - skippedBytes + 64 * 1024);
    expect(source.bytesRead).toBeLessThan(bytes.byteLength / 3);
    // Apart from the skipped bytes, the same model.
    for (const t of sk.model.graph!.initializer!) {
      const want = full.graph!.initializer!.find((u) => u.name === t.name)!;
      if (big.includes(t.name!)) expect(t.rawData).toBeUndefined();
      else expect(t).toEqual(want);
    }
    expect(sk.model.graph!.node).toEqual(full.graph!.node);
    expect({ ...sk.model, graph: undefined }).toEqual({ ...full, graph: undefined });
    await sk.fill([big[1]]);
    expect(sk.model.graph!.initializer!.find((t) => t.name === big[1])!.rawData).toEqual(full.graph!.initializer!.find((t) => t.name === big[1])!.rawData);
    expect([...sk.skipped.keys()]).toEqual([big[0]]);
    await sk.fill(big);
    expectSameModel(sk.model, full);
  });

  it('gives the model parseOnnx gives for a real MindSpore export and for a transformer block', async () => {
    for (const [bytes, skips] of [[readFileSync(EXAMPLE), 4], [serializeOnnx(transformerNetwork(128, 8, 512).model), 12]] as const) {
      const sk = await readOnnxSkeleton(localSource(bytes));
      expect(sk.skipped.size).toBe(skips);
      await sk.fill(sk.skipped.keys());
      expectSameModel(sk.model, parseOnnx(bytes));
    }
  });

  it('reads a remote object (no synchronous reads) in a few large requests, skipping only weights over 4 MiB', async () => {
    // Eleven 256 KiB weights, one of 2 MiB and one of 8 MiB: from a local file all thirteen are skipped.
    const net = mlpNetwork([16, ...new Array(12).fill(256), 2048, 1024, 4]);
    const bytes = serializeOnnx(net.model);
    expect((await readOnnxSkeleton(localSource(bytes))).skipped.size).toBe(13);
    let reads = 0;
    const remote = memorySource('mem/net.onnx', bytes);
    const read = remote.read.bind(remote);
    remote.read = (offset, length) => (reads++, read(offset, length));
    const sk = await readOnnxSkeleton(remote);
    expect([...sk.skipped.keys()]).toEqual(['layers.13.weight']);
    expect(sk.skipped.get('layers.13.weight')!.length).toBe(2048 * 1024 * 4);
    expect(reads).toBeLessThanOrEqual(Math.ceil((bytes.byteLength - 8 * 2 ** 20) / REMOTE_TUNING.minWindow) + 1);
    await sk.fill(sk.skipped.keys());
    expectSameModel(sk.model, parseOnnx(bytes));
  });

  it('never skips integer tensors (shape arguments)', async () => {
    const n = LAZY_BYTES / 4;
    const g = new GraphBuilder('ints').input('x', 'F32', [1, n]);
    g.initializer('f', 'F32', [n], seededFloats(n, 1, 1));
    const ints = new Int32Array(n).fill(7);
    const model = g.model();
    model.graph!.initializer!.push({ name: 'i', dims: [n], dataType: 6, rawData: new Uint8Array(ints.buffer) });
    const sk = await readOnnxSkeleton(localSource(serializeOnnx(model)));
    expect([...sk.skipped.keys()]).toEqual(['f']);
    expect(sk.model.graph!.initializer!.find((t) => t.name === 'i')!.rawData!.byteLength).toBe(n * 4);
  });

  it('walks past a 10-byte varint (a negative int64) as parseOnnx does', async () => {
    const model = mlpNetwork([16, 256, 256, 4]).model;
    model.modelVersion = -1;
    const bytes = serializeOnnx(model);
    const sk = await readOnnxSkeleton(localSource(bytes));
    expect(sk.skipped.size).toBe(1);
    await sk.fill(sk.skipped.keys());
    expectSameModel(sk.model, parseOnnx(bytes));
    expect(sk.model.modelVersion).toBe(-1);
  });

  it('keeps protobuf\'s last-one-wins: a data type given again after the bytes, a second raw_data', async () => {
    const big = new Uint8Array(LAZY_BYTES).fill(3);
    const tensor = (fields: (w: WireWriter) => WireWriter) => fields(new WireWriter().key(1, 0).varint(LAZY_BYTES / 8).string(8, 't')).finish();
    const modelOf = (t: Uint8Array) => new WireWriter().key(1, 0).varint(8).bytes(7, new WireWriter().string(2, 'g').bytes(5, t).finish()).finish();
    const cases = [
      // Float at first, int64 in the end: an integer tensor, whose bytes are read.
      tensor((w) => w.key(2, 0).varint(1).bytes(9, big).key(2, 0).varint(7)),
      // A large raw_data, then a small one: the small one counts.
      tensor((w) => w.key(2, 0).varint(1).bytes(9, big).bytes(9, new Uint8Array(8).fill(5))),
    ];
    for (const t of cases) {
      const bytes = modelOf(t);
      const sk = await readOnnxSkeleton(localSource(bytes));
      expect(sk.skipped.size).toBe(0);
      expectSameModel(sk.model, parseOnnx(bytes));
    }
  });

  it('names the file when the bytes are not an ONNX model', async () => {
    const bytes = serializeOnnx(mlpNetwork([16, 256, 256, 4]).model);
    for (const [bad, message] of [
      [bytes.subarray(0, bytes.byteLength - 100), /^mem\/net\.onnx: not an ONNX model \(.*runs past the end/],
      [Buffer.from('not a model at all'), /^mem\/net\.onnx: /],
      [Uint8Array.from([0x08, 0x07]), /^mem\/net\.onnx: ONNX model has no graph \(field 7\); expected a ModelProto$/],
    ] as const) {
      const e = await readOnnxSkeleton(localSource(bad)).catch((x) => x);
      expect(e).toBeInstanceOf(ShardserveError);
      expect(e.code).toBe('OnnxParse');
      expect(e.message).toMatch(message);
    }
  });
});
