import { describe, expect, it } from 'vitest';
import { ShardserveError } from '../errors.js';
import { GraphBuilder, seededFloats } from './graph-builder.js';
import { dtypeOfOnnx, onnxDataType, parseOnnx, serializeOnnx, tensorTypeOf } from './model.js';

function smallModel() {
  return new GraphBuilder('small')
    .input('x', 'F32', ['batch', 4])
    .initializer('w', 'F32', [4, 3], seededFloats(12, 1))
    .node('MatMul', ['x', 'w'], ['h'])
    .node('Transpose', ['h'], ['y'], { perm: [1, 0] })
    .output('y', 'F32', [3, 'batch'])
    .model();
}

describe('parseOnnx / serializeOnnx', () => {
  it('parses what it serialized into the same model', () => {
    const model = smallModel();
    const parsed = parseOnnx(serializeOnnx(model));
    const withoutData = (m: object) => JSON.parse(JSON.stringify(m, (k, v) => (k === 'rawData' ? undefined : v)));
    expect(withoutData(parsed)).toEqual(withoutData(model));
    expect(parsed.graph!.node!.map((n) => n.opType)).toEqual(['MatMul', 'Transpose']);
    expect(parsed.graph!.node![1].attribute).toEqual([{ name: 'perm', type: 7, ints: [1, 0] }]);
    expect(parsed.graph!.initializer![0].dims).toEqual([4, 3]);
    expect(Array.from(new Float32Array(new Uint8Array(parsed.graph!.initializer![0].rawData!).buffer))).toEqual(Array.from(seededFloats(12, 1)));
    expect(tensorTypeOf(parsed.graph!.output![0])).toEqual({ elemType: 1, shape: [3, 'batch'] });
    expect(parsed.irVersion).toBe(8);
    expect(parsed.opsetImport).toEqual([{ domain: '', version: 17 }]);
  });

  it('re-serializes a parsed model to the same bytes', () => {
    const bytes = serializeOnnx(smallModel());
    expect(Buffer.from(serializeOnnx(parseOnnx(bytes))).equals(Buffer.from(bytes))).toBe(true);
  });

  it('writes weights and every field around them in place (fields before and after raw_data, graph and model)', () => {
    const model = smallModel();
    const w = model.graph!.initializer![0];
    w.docString = 'weights';
    w.metadataProps = [{ key: 'origin', value: 'ckpt' }];
    model.graph!.initializer!.push({ name: 'c', dims: [2], dataType: 1, floatData: [1.5, -2] });
    model.graph!.valueInfo = [{ name: 'h', type: { tensorType: { elemType: 1 } } }];
    model.graph!.docString = 'graph doc';
    model.metadataProps = [{ key: 'k', value: 'v' }];
    model.docString = 'model doc';
    const bytes = serializeOnnx(model);
    const parsed = parseOnnx(bytes);
    const withoutData = (m: object) => JSON.parse(JSON.stringify(m, (k, v) => (k === 'rawData' ? Buffer.from(v).toString('hex') : v)));
    expect(withoutData(parsed)).toEqual(withoutData(model));
    expect(Buffer.from(serializeOnnx(parsed)).equals(Buffer.from(bytes))).toBe(true);
  });

  it('keeps int64 attribute values that a double cannot hold, as decimal strings', () => {
    const model = new GraphBuilder('ints').input('x', 'F32', [2]).node('Identity', ['x'], ['y']).output('y', 'F32', [2]).model();
    model.graph!.node![0].attribute = [{ name: 'big', type: 7, ints: ['9223372036854775807', '-9223372036854775808', '1152921504606846977', 5] }];
    const parsed = parseOnnx(serializeOnnx(model));
    expect(parsed.graph!.node![0].attribute![0].ints).toEqual(['9223372036854775807', '-9223372036854775808', '1152921504606846977', 5]);
  });

  it('keeps raw_data as a view of the input bytes (no copy of the weights)', () => {
    const bytes = serializeOnnx(smallModel());
    const raw = parseOnnx(bytes).graph!.initializer![0].rawData!;
    expect(raw.buffer).toBe(bytes.buffer);
  });

  it('rejects bytes that are not an ONNX model, naming the file', () => {
    const garbage = new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]);
    expect(() => parseOnnx(garbage, 'bad.onnx')).toThrow(ShardserveError);
    expect(() => parseOnnx(garbage, 'bad.onnx')).toThrow(/^bad\.onnx: not an ONNX model/);
  });

  it('rejects a ModelProto without a graph', () => {
    expect(() => parseOnnx(serializeOnnx({ irVersion: 8 }), 'empty.onnx')).toThrow('empty.onnx: ONNX model has no graph (field 7); expected a ModelProto');
  });

  it('maps every canonical dtype to an ONNX element type and back', () => {
    for (const d of ['BOOL', 'U8', 'I8', 'I16', 'U16', 'I32', 'U32', 'I64', 'U64', 'F16', 'BF16', 'F32', 'F64'] as const) {
      expect(dtypeOfOnnx(onnxDataType(d))).toBe(d);
    }
    expect(dtypeOfOnnx(8)).toBeUndefined(); // STRING
  });
});
