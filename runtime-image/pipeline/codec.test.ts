import { describe, expect, it } from 'vitest';
import { services } from '../protos.js';
import { frameMessage } from '../grpc-h2.js';
import { ALIGN_MIN, decodeStageMessage, decodeStageReply, encodeStageMessage, encodeStageReply, frameInferResponse, frameStageMessage, frameStageReply, ZERO_COPY_MIN } from './codec.js';

// The hand-written codec must speak exactly rank.proto's wire format: checked both ways against
// protobufjs (through proto-loader's definitions of the same messages).
const reference = () => (services().stageProtoLoader.service as any).Forward;
const data = Buffer.from(Array.from({ length: 300 }, (_, i) => i % 251));

const messages = {
  'a request with two tensors, a budget and requested outputs': {
    id: '18446744', request: { tensors: [{ name: 'h', datatype: 'FP32', shape: ['2', '0', '300000'], data }, { name: 'é', datatype: 'INT64', shape: [], data: Buffer.alloc(0) }], budget_us: '90071992547', outputs: ['y', 'blocks.0.h'] },
  },
  'a cancel': { id: '7', cancel: true },
};
const replies = {
  'a reply with outputs and timings': { id: '3', outputs: [{ name: 'y', datatype: 'FP16', shape: ['1', '150'], data }], error: null, timings: [{ stage: 0, compute_us: '0' }, { stage: 3, compute_us: '123456789' }] },
  'an error reply': { id: '4', outputs: [], error: { kind: 'Unavailable', message: 'stage 2 is unreachable — ✗' }, timings: [] },
};

const norm = (x: any): any => JSON.parse(JSON.stringify(x, (_, v) => (v && v.type === 'Buffer' ? Buffer.from(v.data).toString('hex') : v)));

describe('rank.proto codec', () => {
  for (const [name, m] of Object.entries(messages)) {
    it(`encodes and decodes ${name} exactly as protobufjs does`, () => {
      const ours = encodeStageMessage(m as any);
      const theirs = reference().requestSerialize(m);
      expect(norm(reference().requestDeserialize(ours))).toEqual(norm(reference().requestDeserialize(theirs)));
      const decoded = decodeStageMessage(theirs);
      expect(norm({ ...decoded, request: decoded.request && { ...decoded.request, tensors: decoded.request.tensors.map((t) => ({ ...t, shape: t.shape.map(String) })) } })).toEqual(norm({ request: null, cancel: false, ...m }));
    });
  }
  for (const [name, r] of Object.entries(replies)) {
    it(`encodes and decodes ${name} exactly as protobufjs does`, () => {
      const ours = encodeStageReply(r as any);
      const theirs = reference().responseSerialize(r);
      expect(norm(reference().responseDeserialize(ours))).toEqual(norm(reference().responseDeserialize(theirs)));
      const decoded = decodeStageReply(theirs);
      expect(norm({ ...decoded, outputs: decoded.outputs.map((t) => ({ ...t, shape: t.shape.map(String) })) })).toEqual(norm(r));
    });
  }
  it('frames a message as prefix + the same bytes, large tensor bytes referenced instead of copied', () => {
    const big = Buffer.from(Array.from({ length: ZERO_COPY_MIN + 3 }, (_, i) => i % 253));
    const small = Buffer.from([1, 2, 3, 4]);
    const m = { id: '9', request: { tensors: [{ name: 'a', datatype: 'FP32', shape: ['1', '4'], data: small }, { name: 'h', datatype: 'UINT8', shape: [String(big.length)], data: big }, { name: 'g', datatype: 'UINT8', shape: [String(big.length)], data: big }], budget_us: '5', outputs: ['y'] } };
    const r = { id: '9', outputs: [{ name: 'y', datatype: 'UINT8', shape: [String(big.length)], data: big }], error: null, timings: [{ stage: 1, compute_us: '7' }] };
    for (const [pieces, body, bigPieces] of [[frameStageMessage(m), encodeStageMessage(m), 2], [frameStageReply(r), encodeStageReply(r), 1]] as const) {
      expect(Array.isArray(pieces)).toBe(true);
      const list = pieces as Uint8Array[];
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(body.length, 1);
      expect(Buffer.concat(list)).toEqual(Buffer.concat([prefix, body]));
      expect(list.filter((p) => p === big).length).toBe(bigPieces);
      expect(list.some((p) => p === small)).toBe(false);
    }
    // A large tensor as the very last bytes: no empty piece is written after it.
    const tail = frameStageReply({ id: '1', outputs: [{ name: 'y', datatype: 'UINT8', shape: [String(big.length)], data: big }], error: null, timings: [] }) as Uint8Array[];
    expect(tail.at(-1)).toBe(big);
    expect(tail.every((p) => p.length > 0)).toBe(true);
    // Without a large tensor: one buffer, prefix included.
    const one = frameStageMessage({ id: '2', cancel: true });
    expect(Buffer.isBuffer(one)).toBe(true);
    expect(one).toEqual(Buffer.concat([Buffer.from([0, 0, 0, 0, encodeStageMessage({ id: '2', cancel: true }).length]), encodeStageMessage({ id: '2', cancel: true })]));
  });

  it('starts every large request tensor 8-byte aligned in the message, whatever comes before it', () => {
    const filled = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) % 256));
    const bigs = [ALIGN_MIN, ALIGN_MIN + 3, 200_001, (1 << 21) + 5].map(filled);
    let checked = 0;
    for (const id of ['1', '127', '128', '16384', '2147483648']) {
      for (let nameLength = 0; nameLength <= 9; nameLength++) {
        for (const [b, big] of bigs.entries()) {
          const name = 'n'.repeat(nameLength);
          const m = { id, request: { tensors: [
            { name, datatype: 'FP32', shape: [String(big.length / 4 | 0), '1'], data: big },
            { name: 'small', datatype: 'INT8', shape: ['3'], data: Buffer.from([1, 2, 3]) },
            { name: name + 'é', datatype: 'UINT8', shape: ['2', String(bigs[(b + 1) % bigs.length].length)], data: bigs[(b + 1) % bigs.length] },
          ], budget_us: b % 2 ? '0' : '34359738368', outputs: b % 2 ? [] : ['y', ''] } };
          const framed = Buffer.concat(frameStageMessage(m) as Uint8Array[]);
          const encoded = encodeStageMessage(m);
          expect(framed.subarray(5).equals(encoded)).toBe(true);
          // The receiver gets a large message 8-byte aligned (h2/server.test.ts checks the transport).
          const body = Buffer.from(new ArrayBuffer(encoded.length));
          body.set(encoded);
          const got = decodeStageMessage(body).request!.tensors;
          for (const i of [0, 2]) {
            expect(got[i].data.byteOffset % 8).toBe(0);
            expect(Buffer.from(got[i].data).equals(m.request.tensors[i].data)).toBe(true);
          }
          expect(got.map((t) => [t.name, t.datatype, t.shape.map(String)])).toEqual(m.request.tensors.map((t) => [t.name, t.datatype, t.shape]));
          const theirs = reference().requestDeserialize(encoded);
          expect(theirs.request.tensors.map((t: any) => Buffer.compare(t.data, m.request.tensors[theirs.request.tensors.indexOf(t)].data))).toEqual([0, 0, 0]);
          expect(theirs.request.budget_us).toBe(m.request.budget_us);
          checked++;
        }
      }
    }
    expect(checked).toBe(200);
  });

  it('writes ModelInferResponse byte for byte as protobufjs does, large outputs referenced', () => {
    const infer = (services().oip.service as any).ModelInfer;
    const big = Buffer.from(Array.from({ length: ZERO_COPY_MIN + 5 }, (_, i) => (i * 7) % 256));
    const cases = [
      { model_name: 'net', model_version: '1', id: '', outputs: [{ name: 'y', datatype: 'FP32', shape: [4, 256] }], raw_output_contents: [data] },
      { model_name: 'ñet', model_version: '', id: 'req-∂-1', outputs: [{ name: 'a', datatype: 'BOOL', shape: [] }, { name: 'b', datatype: 'INT64', shape: [0, 300000, 1] }, { name: 'c', datatype: 'UINT8', shape: [big.length] }], raw_output_contents: [Buffer.alloc(0), data, big] },
      { model_name: 'm', model_version: '1', id: '7', outputs: [], raw_output_contents: [] },
    ];
    for (const r of cases) {
      const ours = frameInferResponse(r);
      const bytes = Buffer.isBuffer(ours) ? ours : Buffer.concat(ours as Uint8Array[]);
      expect(bytes.equals(frameMessage(infer.responseSerialize(r)))).toBe(true);
      expect(Array.isArray(ours)).toBe(r.raw_output_contents.includes(big));
      if (Array.isArray(ours)) expect((ours as Uint8Array[]).filter((p) => p === big).length).toBe(1);
    }
  });

  it('refuses a truncated message', () => {
    const bytes = encodeStageMessage(messages['a request with two tensors, a budget and requested outputs'] as any);
    expect(() => decodeStageMessage(bytes.subarray(0, bytes.length - 10))).toThrow(/truncated/);
  });
});
