/**
 * ONNX models as plain objects: parse the bytes of a `.onnx` file into an `OnnxModel` and serialize
 * one back. The shapes below mirror `onnx.proto` (camelCase field names, enums as numbers). Counts
 * (dims, versions) are numbers; free-form int64 values (attribute `i`/`ints`, `int64Data`) are numbers
 * when they fit exactly in a double and decimal strings otherwise, so nothing is rounded on the way
 * through. Large byte fields (`rawData`) are views of the parsed buffer, not copies.
 */
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import type { DType } from '../dtype.js';
import { ShardserveError } from '../errors.js';

/** An int64 that is not a count: a number when exact, else its decimal string. */
export type Int64 = number | string;

export interface StringStringEntry { key?: string; value?: string }
export interface OperatorSetId { domain?: string; version?: number }

export interface TensorProto {
  dims?: number[];
  dataType?: number;
  segment?: { begin?: number; end?: number };
  floatData?: number[];
  int32Data?: number[];
  stringData?: Uint8Array[];
  int64Data?: Int64[];
  name?: string;
  docString?: string;
  rawData?: Uint8Array;
  externalData?: StringStringEntry[];
  /** 0 = DEFAULT (data in this message), 1 = EXTERNAL (data in a file named by externalData). */
  dataLocation?: number;
  doubleData?: number[];
  uint64Data?: Int64[];
  metadataProps?: StringStringEntry[];
}

export interface SparseTensorProto { values?: TensorProto; indices?: TensorProto; dims?: number[] }

export interface Dimension { dimValue?: number; dimParam?: string; denotation?: string }
export interface TensorShapeProto { dim?: Dimension[] }

export interface TypeProto {
  tensorType?: { elemType?: number; shape?: TensorShapeProto };
  sequenceType?: { elemType?: TypeProto };
  mapType?: { keyType?: number; valueType?: TypeProto };
  optionalType?: { elemType?: TypeProto };
  sparseTensorType?: { elemType?: number; shape?: TensorShapeProto };
  denotation?: string;
}

export interface ValueInfoProto { name?: string; type?: TypeProto; docString?: string; metadataProps?: StringStringEntry[] }

export interface AttributeProto {
  name?: string;
  refAttrName?: string;
  docString?: string;
  type?: number;
  f?: number;
  i?: Int64;
  s?: Uint8Array;
  t?: TensorProto;
  g?: GraphProto;
  sparseTensor?: SparseTensorProto;
  tp?: TypeProto;
  floats?: number[];
  ints?: Int64[];
  strings?: Uint8Array[];
  tensors?: TensorProto[];
  graphs?: GraphProto[];
  sparseTensors?: SparseTensorProto[];
  typeProtos?: TypeProto[];
}

export interface NodeProto {
  input?: string[];
  output?: string[];
  name?: string;
  opType?: string;
  domain?: string;
  overload?: string;
  attribute?: AttributeProto[];
  docString?: string;
  metadataProps?: StringStringEntry[];
}

export interface GraphProto {
  node?: NodeProto[];
  name?: string;
  initializer?: TensorProto[];
  sparseInitializer?: SparseTensorProto[];
  docString?: string;
  input?: ValueInfoProto[];
  output?: ValueInfoProto[];
  valueInfo?: ValueInfoProto[];
  metadataProps?: StringStringEntry[];
}

export interface FunctionProto {
  name?: string;
  input?: string[];
  output?: string[];
  attribute?: string[];
  attributeProto?: AttributeProto[];
  node?: NodeProto[];
  docString?: string;
  opsetImport?: OperatorSetId[];
  domain?: string;
  overload?: string;
  valueInfo?: ValueInfoProto[];
  metadataProps?: StringStringEntry[];
}

export interface OnnxModel {
  irVersion?: number;
  opsetImport?: OperatorSetId[];
  producerName?: string;
  producerVersion?: string;
  domain?: string;
  modelVersion?: number;
  docString?: string;
  graph?: GraphProto;
  metadataProps?: StringStringEntry[];
  functions?: FunctionProto[];
}

/** ONNX TensorProto.DataType numbers. */
export const OnnxDataType = {
  UNDEFINED: 0, FLOAT: 1, UINT8: 2, INT8: 3, UINT16: 4, INT16: 5, INT32: 6, INT64: 7, STRING: 8,
  BOOL: 9, FLOAT16: 10, DOUBLE: 11, UINT32: 12, UINT64: 13, COMPLEX64: 14, COMPLEX128: 15, BFLOAT16: 16,
} as const;

const DTYPE_TO_ONNX: Record<DType, number> = {
  BOOL: 9, U8: 2, I8: 3, I16: 5, U16: 4, I32: 6, U32: 12, I64: 7, U64: 13, F16: 10, BF16: 16, F32: 1, F64: 11,
};
const ONNX_TO_DTYPE = new Map<number, DType>(Object.entries(DTYPE_TO_ONNX).map(([d, n]) => [n, d as DType]));

export function onnxDataType(dtype: DType): number {
  return DTYPE_TO_ONNX[dtype];
}

/** The DType of an ONNX element type, or undefined for types we do not carry (string, complex, float8). */
export function dtypeOfOnnx(dataType: number | undefined): DType | undefined {
  return dataType === undefined ? undefined : ONNX_TO_DTYPE.get(dataType);
}

const ONNX_TYPE_NAMES = new Map<number, string>(Object.entries(OnnxDataType).map(([k, v]) => [v, k]));
export function onnxDataTypeName(dataType: number | undefined): string {
  return dataType === undefined ? 'unset' : ONNX_TYPE_NAMES.get(dataType) ?? `type ${dataType}`;
}

let modelType: protobuf.Type | undefined;
function modelProtoType(): protobuf.Type {
  if (!modelType) {
    const root = protobuf.loadSync(fileURLToPath(new URL('./onnx.proto', import.meta.url)));
    modelType = root.lookupType('onnx.ModelProto');
  }
  return modelType;
}

/** Fields whose int64 values are counts or versions: always numbers. */
const COUNT_FIELDS = new Set(['dims', 'dimValue', 'irVersion', 'modelVersion', 'version', 'begin', 'end']);
/** Free-form int64 fields: numbers when exact, else decimal strings. */
const VALUE_FIELDS = new Set(['i', 'ints', 'int64Data', 'uint64Data']);

function exactNumber(s: string): number | string {
  const n = Number(s);
  return Number.isSafeInteger(n) ? n : s;
}

/** After toObject({longs: String}): turn int64 strings into numbers where they are counts or exact. */
function normalizeLongs(value: unknown, uri: string): void {
  if (Array.isArray(value)) {
    for (const v of value) if (v !== null && typeof v === 'object') normalizeLongs(v, uri);
    return;
  }
  if (value === null || typeof value !== 'object' || ArrayBuffer.isView(value)) return;
  const obj = value as Record<string, unknown>;
  for (const [key, v] of Object.entries(obj)) {
    if (COUNT_FIELDS.has(key) && (typeof v === 'string' || Array.isArray(v))) {
      const toCount = (s: unknown): number => {
        const n = Number(s);
        if (!Number.isSafeInteger(n)) {
          throw new ShardserveError('OnnxParse', `${uri}: field '${key}' holds ${String(s)}, expected an integer below 2^53`, { file: uri });
        }
        return n;
      };
      obj[key] = Array.isArray(v) ? v.map(toCount) : toCount(v);
    } else if (VALUE_FIELDS.has(key) && (typeof v === 'string' || Array.isArray(v))) {
      obj[key] = Array.isArray(v) ? v.map((s) => (typeof s === 'string' ? exactNumber(s) : s)) : exactNumber(v as string);
    } else if (v !== null && typeof v === 'object') {
      normalizeLongs(v, uri);
    }
  }
}

/**
 * Parse the bytes of an ONNX model. `uri` names the file in error messages.
 * Fails with ShardserveError('OnnxParse') when the bytes are not an ONNX ModelProto with a graph.
 */
export function parseOnnx(bytes: Uint8Array, uri = 'model.onnx'): OnnxModel {
  const type = modelProtoType();
  let message: protobuf.Message;
  try {
    message = type.decode(bytes);
  } catch (e) {
    throw new ShardserveError('OnnxParse', `${uri}: not an ONNX model (${(e as Error).message})`, { file: uri, cause: e });
  }
  const model = type.toObject(message, { longs: String, enums: Number, defaults: false, arrays: false, oneofs: false }) as OnnxModel;
  normalizeLongs(model, uri);
  if (!model.graph) {
    throw new ShardserveError('OnnxParse', `${uri}: ONNX model has no graph (field 7); expected a ModelProto`, { file: uri });
  }
  return model;
}

/** Serialize a model to ONNX bytes (any plain object shaped like OnnxModel). */
export function serializeOnnx(model: OnnxModel): Uint8Array {
  // protobufjs copies every bytes field several times while growing its buffer (about 1 s per 100 MB).
  // Weights are almost all of a model, so the initializers' raw_data are laid out by hand: everything
  // else is encoded by protobufjs in pieces, in field-number order (the bytes are the same as encoding
  // the whole message at once), and each weight is copied once into one buffer of the final size.
  const graph = model.graph;
  if (!graph?.initializer?.some((t) => t.rawData && t.rawData.byteLength > 0)) return encodeWhole('onnx.ModelProto', model);
  const chunks: Uint8Array[] = [];
  const modelLo = encodeFields('onnx.ModelProto', model, (id) => id < 7);
  const modelHi = encodeFields('onnx.ModelProto', model, (id) => id > 7);
  const graphLo = encodeFields('onnx.GraphProto', graph, (id) => id < 5);
  const graphHi = encodeFields('onnx.GraphProto', graph, (id) => id > 5);
  const tensorChunks: Uint8Array[][] = graph.initializer.map((t) => {
    if (!t.rawData) return [encodeWhole('onnx.TensorProto', t)];
    return [
      encodeFields('onnx.TensorProto', t, (id) => id < 9),
      lengthDelimited(9, t.rawData.byteLength),
      t.rawData,
      encodeFields('onnx.TensorProto', t, (id) => id > 9),
    ];
  });
  const size = (list: Uint8Array[]) => list.reduce((a, c) => a + c.byteLength, 0);
  let graphSize = graphLo.byteLength + graphHi.byteLength;
  const tensorSizes = tensorChunks.map(size);
  for (const n of tensorSizes) graphSize += lengthDelimited(5, n).byteLength + n;
  chunks.push(modelLo, lengthDelimited(7, graphSize), graphLo);
  tensorChunks.forEach((parts, i) => chunks.push(lengthDelimited(5, tensorSizes[i]), ...parts));
  chunks.push(graphHi, modelHi);
  const out: Uint8Array = Buffer.allocUnsafe(size(chunks)); // every byte is written below
  let offset = 0;
  for (const c of chunks) {
    out.set(c, offset);
    offset += c.byteLength;
  }
  return out;
}

function encodeWhole(typeName: string, value: object): Uint8Array {
  const type = modelProtoType().root.lookupType(typeName);
  return type.encode(type.fromObject(value as Record<string, unknown>)).finish();
}

/** The encoding of only those fields of `value` whose field numbers pass `keep`. */
function encodeFields(typeName: string, value: object, keep: (id: number) => boolean): Uint8Array {
  const type = modelProtoType().root.lookupType(typeName);
  const part: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    const field = type.fields[key];
    if (field && keep(field.id)) part[key] = v;
  }
  return type.encode(type.fromObject(part)).finish();
}

/** Tag (wire type 2) and length varint of a length-delimited field. */
function lengthDelimited(fieldNumber: number, length: number): Uint8Array {
  const bytes: number[] = [];
  for (let v = fieldNumber * 8 + 2; ; ) {
    if (v < 0x80) { bytes.push(v); break; }
    bytes.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  for (let v = length; ; ) {
    if (v < 0x80) { bytes.push(v); break; }
    bytes.push((v & 0x7f) | 0x80);
    v = Math.floor(v / 128);
  }
  return Uint8Array.from(bytes);
}

/** The element type and shape a ValueInfoProto declares (tensor types only). */
export function tensorTypeOf(info: ValueInfoProto | undefined): { elemType?: number; shape?: Array<number | string | null> } | undefined {
  const tt = info?.type?.tensorType;
  if (!tt) return undefined;
  const shape = tt.shape ? (tt.shape.dim ?? []).map((d) => d.dimValue ?? d.dimParam ?? null) : undefined;
  return { elemType: tt.elemType, shape };
}

/** A tensor ValueInfoProto for a name, element type and shape (null dims and a null shape are left unknown). */
export function tensorValueInfo(name: string, elemType: number, shape: Array<number | string | null> | null | undefined): ValueInfoProto {
  const tensorType: NonNullable<TypeProto['tensorType']> = { elemType };
  if (shape) {
    tensorType.shape = { dim: shape.map((d) => (typeof d === 'number' ? { dimValue: d } : typeof d === 'string' ? { dimParam: d } : {})) };
  }
  return { name, type: { tensorType } };
}
