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

/**
 * The tensor's elements as the text of a flat JSON array. 64-bit integers are written with all their
 * digits (a JSON number has no size limit; only JavaScript's reading of it does).
 */
export function jsonDataText(t: Tensor): string {
  if (t.datatype === 'FP16') throw new InferError('InvalidArgument', `output '${t.name}' is FP16: ask for it with binary_data=true`);
  const v = typedView(t.datatype, t.data);
  if (t.datatype === 'BOOL') return `[${Array.from(v as Uint8Array, (x) => (x !== 0 ? 'true' : 'false')).join(',')}]`;
  if (v instanceof BigInt64Array || v instanceof BigUint64Array) return `[${Array.from(v, String).join(',')}]`;
  // The same text as JSON.stringify(Array.from(v)): each element's Number::toString (-0 as 0), joined
  // natively (a flat string, not a rope of two pieces per element). Non-finite values need null, by hand.
  const f = v as Float32Array;
  let finite = true;
  for (let i = 0; i < f.length && finite; i++) finite = Number.isFinite(f[i]);
  if (finite) return `[${f.join(',')}]`;
  let out = '[';
  for (let i = 0; i < f.length; i++) {
    const x = f[i];
    out += (i ? ',' : '') + (Number.isFinite(x) ? String(x) : 'null');
  }
  return out + ']';
}

/** Inclusive bounds of each integer datatype (what its typed array would otherwise wrap silently). */
const INT_RANGE: Partial<Record<OipDatatype, readonly [bigint, bigint]>> = {
  UINT8: [0n, 255n], UINT16: [0n, 65535n], UINT32: [0n, 4294967295n], UINT64: [0n, 2n ** 64n - 1n],
  INT8: [-128n, 127n], INT16: [-32768n, 32767n], INT32: [-2147483648n, 2147483647n], INT64: [-(2n ** 63n), 2n ** 63n - 1n],
};

/**
 * Flattened data (possibly nested arrays) as bytes of `datatype`. Integers outside the datatype's range
 * are refused, not wrapped. `exact64` elements (decimal strings or bigints, from gRPC typed contents) keep
 * every digit; a JSON number for a 64-bit integer must be a safe integer (|x| < 2^53), because JSON
 * parsing has already rounded anything larger.
 */
export function fromJsonData(name: string, datatype: OipDatatype, shape: number[], data: unknown, exact64 = false): Uint8Array {
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
  const range = INT_RANGE[datatype];
  const [lo, hi] = range ? [Number(range[0]), Number(range[1])] : [0, 0];
  const wide = v instanceof BigInt64Array || v instanceof BigUint64Array;
  for (let i = 0; i < n; i++) {
    const x = flat[i];
    if (datatype === 'BOOL') {
      if (typeof x !== 'boolean' && x !== 0 && x !== 1) throw badElement(name, i, 'a boolean');
      (v as Uint8Array)[i] = x ? 1 : 0;
    } else if (!range) {
      if (typeof x !== 'number') throw badElement(name, i, 'a number');
      (v as Float32Array)[i] = x;
    } else if (!wide) {
      // Up to 32 bits: plain numbers, no BigInt per element.
      if (typeof x !== 'number' || !Number.isInteger(x)) throw badElement(name, i, 'an integer');
      if (x < lo || x > hi) throw outOfRange(name, i, BigInt(x), datatype, range);
      (v as Int32Array)[i] = x;
    } else {
      let b: bigint;
      if (exact64 && (typeof x === 'string' || typeof x === 'bigint') && /^-?\d+$/.test(String(x))) b = BigInt(x);
      else if (typeof x === 'number' && Number.isInteger(x)) {
        if (!Number.isSafeInteger(x)) {
          throw new InferError('InvalidArgument', `input '${name}': element ${i} of data (${x}) is beyond 2^53, where a JSON number no longer holds a ${datatype} exactly; send this input as binary data`);
        }
        b = BigInt(x);
      } else throw badElement(name, i, 'an integer');
      if (b < range[0] || b > range[1]) throw outOfRange(name, i, b, datatype, range);
      (v as BigInt64Array)[i] = b;
    }
  }
  return bytes;
}

function outOfRange(name: string, i: number, x: bigint, datatype: OipDatatype, range: readonly [bigint, bigint]): InferError {
  return new InferError('InvalidArgument', `input '${name}': element ${i} of data (${x}) is outside the ${datatype} range [${range[0]}, ${range[1]}]`);
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
  return fromJsonData(name, datatype, shape, contents[field] ?? [], true);
}
