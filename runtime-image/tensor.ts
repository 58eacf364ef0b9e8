import { InferError } from './errors.js';

/** Open Inference Protocol datatype names. */
export type OipDatatype =
  | 'BOOL' | 'UINT8' | 'UINT16' | 'UINT32' | 'UINT64' | 'INT8' | 'INT16' | 'INT32' | 'INT64'
  | 'FP16' | 'FP32' | 'FP64';

/** One tensor as it moves through the data plane: flattened row-major little-endian bytes. */
export interface Tensor {
  name: string;
  datatype: OipDatatype;
  shape: number[];
  data: Uint8Array;
}

export interface TensorMeta {
  name: string;
  datatype: OipDatatype;
  /** -1 marks a dimension of any size. */
  shape: number[];
}

export const OIP_BYTES: Record<OipDatatype, number> = {
  BOOL: 1, UINT8: 1, UINT16: 2, UINT32: 4, UINT64: 8, INT8: 1, INT16: 2, INT32: 4, INT64: 8,
  FP16: 2, FP32: 4, FP64: 8,
};

/** onnxruntime-node tensor type names. */
export type OrtType =
  | 'bool' | 'uint8' | 'uint16' | 'uint32' | 'uint64' | 'int8' | 'int16' | 'int32' | 'int64'
  | 'float16' | 'float32' | 'float64';

const TO_ORT: Record<OipDatatype, OrtType> = {
  BOOL: 'bool', UINT8: 'uint8', UINT16: 'uint16', UINT32: 'uint32', UINT64: 'uint64', INT8: 'int8',
  INT16: 'int16', INT32: 'int32', INT64: 'int64', FP16: 'float16', FP32: 'float32', FP64: 'float64',
};

export function isOipDatatype(s: string): s is OipDatatype {
  return Object.prototype.hasOwnProperty.call(OIP_BYTES, s);
}

export function ortTypeOf(d: OipDatatype): OrtType {
  return TO_ORT[d];
}

export function oipOfOrtType(t: string): OipDatatype {
  for (const [oip, ort] of Object.entries(TO_ORT)) if (ort === t) return oip as OipDatatype;
  throw new InferError('Unimplemented', `tensor type '${t}' is not supported by the Open Inference Protocol front door`);
}

/** ONNX TensorProto.DataType numbers → OIP names. */
const ONNX_ELEM: Record<number, OipDatatype> = {
  1: 'FP32', 2: 'UINT8', 3: 'INT8', 4: 'UINT16', 5: 'INT16', 6: 'INT32', 7: 'INT64', 9: 'BOOL',
  10: 'FP16', 11: 'FP64', 12: 'UINT32', 13: 'UINT64',
};
export function oipOfOnnxElemType(t: number): OipDatatype {
  const d = ONNX_ELEM[t];
  if (!d) throw new InferError('Unimplemented', `ONNX element type ${t} is not supported by the front door`);
  return d;
}

export function elementCount(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function byteLengthOf(datatype: OipDatatype, shape: readonly number[]): number {
  return elementCount(shape) * OIP_BYTES[datatype];
}

type Typed =
  | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array
  | BigUint64Array | BigInt64Array | Float32Array | Float64Array;

/** A typed-array view of the tensor's bytes (copied when unaligned). */
export function typedView(datatype: OipDatatype, data: Uint8Array): Typed {
  const size = OIP_BYTES[datatype];
  let bytes = data;
  if (bytes.byteOffset % size !== 0) bytes = new Uint8Array(bytes); // copy to an aligned buffer
  const { buffer, byteOffset } = bytes;
  const n = bytes.byteLength / size;
  switch (datatype) {
    case 'BOOL': case 'UINT8': return new Uint8Array(buffer, byteOffset, n);
    case 'INT8': return new Int8Array(buffer, byteOffset, n);
    case 'UINT16': case 'FP16': return new Uint16Array(buffer, byteOffset, n);
    case 'INT16': return new Int16Array(buffer, byteOffset, n);
    case 'UINT32': return new Uint32Array(buffer, byteOffset, n);
    case 'INT32': return new Int32Array(buffer, byteOffset, n);
    case 'UINT64': return new BigUint64Array(buffer, byteOffset, n);
    case 'INT64': return new BigInt64Array(buffer, byteOffset, n);
    case 'FP32': return new Float32Array(buffer, byteOffset, n);
    case 'FP64': return new Float64Array(buffer, byteOffset, n);
  }
}

/** Elements as JSON values (numbers, booleans); 64-bit integers as numbers. */
export function toJsonData(t: Tensor): Array<number | boolean> {
  if (t.datatype === 'FP16') throw new InferError('InvalidArgument', `output '${t.name}' is FP16: ask for it with binary_data=true`);
  const v = typedView(t.datatype, t.data);
  const out: Array<number | boolean> = new Array(v.length);
  if (t.datatype === 'BOOL') for (let i = 0; i < v.length; i++) out[i] = (v as Uint8Array)[i] !== 0;
  else for (let i = 0; i < v.length; i++) out[i] = Number(v[i]);
  return out;
}

/** Flattened JSON data (possibly nested arrays) as bytes of `datatype`. */
export function fromJsonData(name: string, datatype: OipDatatype, shape: number[], data: unknown): Uint8Array {
  const flat: unknown[] = [];
  const walk = (x: unknown) => {
    if (Array.isArray(x)) for (const y of x) walk(y);
    else flat.push(x);
  };
  walk(data);
  const n = elementCount(shape);
  if (flat.length !== n) {
    throw new InferError('InvalidArgument', `input '${name}': data has ${flat.length} elements, shape [${shape.join(',')}] needs ${n}`);
  }
  if (datatype === 'FP16') throw new InferError('InvalidArgument', `input '${name}': FP16 data must be sent as binary data`);
  const bytes = new Uint8Array(n * OIP_BYTES[datatype]);
  const v = typedView(datatype, bytes);
  for (let i = 0; i < n; i++) {
    const x = flat[i];
    if (datatype === 'BOOL') {
      if (typeof x !== 'boolean' && x !== 0 && x !== 1) throw badElement(name, i, 'a boolean');
      (v as Uint8Array)[i] = x ? 1 : 0;
    } else if (typeof x !== 'number' || (datatype !== 'FP32' && datatype !== 'FP64' && !Number.isInteger(x))) {
      throw badElement(name, i, datatype === 'FP32' || datatype === 'FP64' ? 'a number' : 'an integer');
    } else if (v instanceof BigInt64Array || v instanceof BigUint64Array) {
      v[i] = BigInt(x);
    } else {
      (v as Float32Array)[i] = x;
    }
  }
  return bytes;
}

function badElement(name: string, i: number, what: string): InferError {
  return new InferError('InvalidArgument', `input '${name}': element ${i} of data is not ${what}`);
}

/** Field of OIP InferTensorContents that carries `datatype`. */
export function contentsFieldOf(datatype: OipDatatype): string | undefined {
  switch (datatype) {
    case 'BOOL': return 'bool_contents';
    case 'INT8': case 'INT16': case 'INT32': return 'int_contents';
    case 'INT64': return 'int64_contents';
    case 'UINT8': case 'UINT16': case 'UINT32': return 'uint_contents';
    case 'UINT64': return 'uint64_contents';
    case 'FP32': return 'fp32_contents';
    case 'FP64': return 'fp64_contents';
    case 'FP16': return undefined;
  }
}

/** gRPC typed contents (as decoded with longs as strings) → bytes. */
export function fromTypedContents(name: string, datatype: OipDatatype, shape: number[], contents: Record<string, unknown[]>): Uint8Array {
  const field = contentsFieldOf(datatype);
  if (!field) throw new InferError('InvalidArgument', `input '${name}': ${datatype} data must be sent in raw_input_contents`);
  const values = (contents[field] ?? []) as unknown[];
  const data = datatype === 'INT64' || datatype === 'UINT64' ? values.map((x) => Number(x)) : values;
  return fromJsonData(name, datatype, shape, data);
}
