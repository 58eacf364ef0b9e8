/**
 * A small builder for ONNX graphs, so tests and examples can state a network in a few lines:
 *
 *   const g = new GraphBuilder('mlp').input('x', 'F32', ['batch', 4]);
 *   g.initializer('w', 'F32', [4, 8], weights).node('MatMul', ['x', 'w'], ['h']).output('h', 'F32', ['batch', 8]);
 *   const model = g.model();
 */
import type { DType } from '../dtype.js';
import {
  type AttributeProto, type NodeProto, type OnnxModel, type TensorProto, type ValueInfoProto,
  onnxDataType, tensorValueInfo,
} from './model.js';

export type AttributeValue = number | string | number[] | { ints: number[] } | { floats: number[] } | { tensor: TensorProto };

const AttributeType = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7 } as const;

export function attribute(name: string, value: AttributeValue): AttributeProto {
  if (typeof value === 'string') return { name, type: AttributeType.STRING, s: new TextEncoder().encode(value) };
  if (typeof value === 'number') {
    return Number.isInteger(value) && !Object.is(value, -0) ? { name, type: AttributeType.INT, i: value } : { name, type: AttributeType.FLOAT, f: value };
  }
  if (Array.isArray(value)) return { name, type: AttributeType.INTS, ints: value };
  if ('ints' in value) return { name, type: AttributeType.INTS, ints: value.ints };
  if ('floats' in value) return { name, type: AttributeType.FLOATS, floats: value.floats };
  return { name, type: AttributeType.TENSOR, t: value.tensor };
}

/** A float attribute even when the value is integral (e.g. epsilon = 1 would otherwise be an INT). */
export function floatAttribute(name: string, value: number): AttributeProto {
  return { name, type: AttributeType.FLOAT, f: value };
}

/** An initializer tensor from raw little-endian bytes (or a typed array). */
export function tensorProto(name: string, dtype: DType, shape: number[], data: Uint8Array | ArrayBufferView): TensorProto {
  const raw = data instanceof Uint8Array ? data : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return { name, dims: shape, dataType: onnxDataType(dtype), rawData: raw };
}

export class GraphBuilder {
  private readonly nodes: NodeProto[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: ValueInfoProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly valueInfos: ValueInfoProto[] = [];
  private nodeCount = 0;

  constructor(private readonly name: string, private readonly opset = 17) {}

  input(name: string, dtype: DType, shape: Array<number | string>): this {
    this.inputs.push(tensorValueInfo(name, onnxDataType(dtype), shape));
    return this;
  }

  output(name: string, dtype: DType, shape: Array<number | string | null> | null = null): this {
    this.outputs.push(tensorValueInfo(name, onnxDataType(dtype), shape));
    return this;
  }

  valueInfo(name: string, dtype: DType, shape: Array<number | string | null>): this {
    this.valueInfos.push(tensorValueInfo(name, onnxDataType(dtype), shape));
    return this;
  }

  initializer(name: string, dtype: DType, shape: number[], data: Uint8Array | ArrayBufferView): this {
    this.initializers.push(tensorProto(name, dtype, shape, data));
    return this;
  }

  node(opType: string, inputs: string[], outputs: string[], attributes: Record<string, AttributeValue> = {}, extra: AttributeProto[] = []): this {
    const attrs = [...Object.entries(attributes).map(([k, v]) => attribute(k, v)), ...extra];
    const node: NodeProto = { input: inputs, output: outputs, name: `${opType}_${this.nodeCount++}`, opType };
    if (attrs.length) node.attribute = attrs;
    this.nodes.push(node);
    return this;
  }

  model(): OnnxModel {
    return {
      irVersion: 8,
      producerName: 'shardserve-graph-builder',
      opsetImport: [{ domain: '', version: this.opset }],
      graph: {
        name: this.name,
        node: this.nodes,
        input: this.inputs,
        output: this.outputs,
        initializer: this.initializers,
        ...(this.valueInfos.length ? { valueInfo: this.valueInfos } : {}),
      },
    };
  }
}

/** Deterministic pseudo-random float32 values in [-scale, scale) (a fixed LCG, so tests are reproducible). */
export function seededFloats(count: number, seed: number, scale = 1): Float32Array {
  const out = new Float32Array(count);
  let state = (seed >>> 0) || 1;
  for (let i = 0; i < count; i++) {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    out[i] = ((state / 2 ** 32) * 2 - 1) * scale;
  }
  return out;
}
