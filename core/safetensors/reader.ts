import { DTYPE_BYTES, type DType } from '../dtype.js';
import { ShardserveError } from '../errors.js';
import type { CheckpointIndex, TensorEntry } from '../checkpoint/types.js';
import type { ByteSource } from '../storage/source.js';
import type { Storage } from '../storage/storage.js';
import { crc32, crc32OfRange, crc32OfZeros } from '../ckpt/crc.js';

export interface IndexSafetensorsOptions {
  verifyCrc?: boolean;
}

/** MindSpore's `_fast_safe_open` limit (and the safetensors spec's). */
export const MAX_HEADER_BYTES = 100 * 1000 * 1000;

const DTYPES = new Set<string>(Object.keys(DTYPE_BYTES));

/**
 * Index a safetensors file (reference §1.9): `u64 LE N`, an N-byte JSON header, the byte buffer.
 * Checks what MindSpore checks: header ≤ 100 MB, offsets contiguous from 0 with no holes, each
 * tensor exactly prod(shape)·size bytes, and the buffer ending exactly at the end of the file.
 * `__metadata__` is kept; MindSpore's `crc_num` is verified when asked.
 */
export async function indexSafetensors(source: ByteSource, opts: IndexSafetensorsOptions = {}): Promise<CheckpointIndex> {
  const uri = source.uri;
  const fail = (code: string, what: string, param?: string) =>
    new ShardserveError(code, `${uri}: ${param === undefined ? '' : `tensor '${param}': `}${what}`, { file: uri, param });
  if (source.size < 8) throw fail('CorruptSafetensors', `file is ${source.size} bytes, too short for a safetensors header`);
  const first = await source.read(0, 8);
  const n = new DataView(first.buffer, first.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES)) throw fail('CorruptSafetensors', `header length ${n} exceeds ${MAX_HEADER_BYTES} bytes`);
  const headerLength = Number(n);
  if (8 + headerLength > source.size) throw fail('CorruptSafetensors', `header length ${headerLength} runs past the end of the file (size ${source.size})`);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(await source.read(8, headerLength)));
  } catch (e) {
    throw new ShardserveError('CorruptSafetensors', `${uri}: header is not valid JSON (${(e as Error).message})`, { file: uri, cause: e });
  }
  if (!isObject(header)) throw fail('CorruptSafetensors', 'header is not a JSON object');

  const metadata: Record<string, string> = {};
  const raw = header['__metadata__'];
  if (raw !== undefined) {
    if (!isObject(raw)) throw fail('CorruptSafetensors', '__metadata__ is not an object of strings');
    for (const [k, v] of Object.entries(raw)) {
      if (typeof v !== 'string') throw fail('CorruptSafetensors', `__metadata__['${k}'] is not a string`);
      metadata[k] = v;
    }
  }

  const bufferStart = 8 + headerLength;
  const entries: Array<TensorEntry & { begin: number }> = [];
  for (const [name, value] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    if (!isObject(value)) throw fail('CorruptSafetensors', 'entry is not an object', name);
    const { dtype, shape, data_offsets: offsets } = value;
    if (typeof dtype !== 'string' || !DTYPES.has(dtype)) throw fail('UnknownDType', `unknown dtype ${JSON.stringify(dtype)} (expected one of ${[...DTYPES].join(', ')})`, name);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw fail('CorruptSafetensors', 'shape is not a list of non-negative integers', name);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((d) => Number.isSafeInteger(d) && d >= 0) || offsets[1] < offsets[0]) {
      throw fail('CorruptSafetensors', 'data_offsets is not [begin, end] with 0 ≤ begin ≤ end', name);
    }
    let expected = DTYPE_BYTES[dtype as DType];
    for (const d of shape as number[]) expected *= d;
    const length = offsets[1] - offsets[0];
    if (length !== expected) throw fail('SizeMismatch', `data_offsets span ${length} bytes, but ${dtype} ${JSON.stringify(shape)} needs ${expected}`, name);
    entries.push({ name, dtype: dtype as DType, shape: shape as number[], pieces: [{ offset: bufferStart + offsets[0], length }], byteLength: length, begin: offsets[0] });
  }

  // Contiguous from 0, no holes, no overlap (ordered by offset; MindSpore's own files list the
  // tensors in offset order, which this also accepts).
  const byOffset = [...entries].sort((a, b) => a.begin - b.begin || a.byteLength - b.byteLength);
  let at = 0;
  for (const e of byOffset) {
    if (e.begin !== at) throw fail('CorruptSafetensors', `data_offsets begin at ${e.begin}, expected ${at} (tensors must be contiguous, without holes or overlap)`, e.name);
    at += e.byteLength;
  }
  if (bufferStart + at !== source.size) {
    throw fail('CorruptSafetensors', `byte buffer ends at ${bufferStart + at}, but the file is ${source.size} bytes`);
  }

  const tensors = new Map<string, TensorEntry>();
  const notes: string[] = [];
  for (const { begin: _begin, ...e } of entries) {
    tensors.set(e.name, e);
    if (metadata[e.name] === 'Int4') notes.push(`tensor '${e.name}' is Int4 (qint4x2, two values per byte) stored as ${e.dtype}`);
  }

  let crc: CheckpointIndex['crc'] = metadata.crc_num === undefined ? 'absent' : 'not-checked';
  if (opts.verifyCrc && metadata.crc_num !== undefined) {
    if (!/^\d+$/.test(metadata.crc_num)) throw fail('CorruptSafetensors', `__metadata__ crc_num '${metadata.crc_num}' is not a decimal number`);
    const actual = await safetensorsCrc(source, tensors);
    if (BigInt(actual) !== BigInt(metadata.crc_num)) {
      throw new ShardserveError('CrcMismatch', `${uri}: CRC check failed: crc_num says ${metadata.crc_num}, the data has ${actual}`, { file: uri });
    }
    crc = 'verified';
  }
  return { format: 'safetensors', source, tensors, strings: new Map(), notes, crc, encryption: 'none', metadata };
}

/**
 * MindSpore's safetensors crc_num: CRC-32 over utf8(name) then `bytes(array)` for each name in
 * sorted order. Python's `bytes()` of a 0-d integer numpy array is not its data but `value` zero
 * bytes (the array is taken as a count), so integer scalars contribute that (checked against files
 * MindSpore 2.x wrote); a negative integer scalar makes MindSpore itself fail.
 */
export async function safetensorsCrc(source: ByteSource, tensors: Map<string, TensorEntry>): Promise<number> {
  let c = 0;
  for (const name of [...tensors.keys()].sort(compareCodeUnits)) {
    const e = tensors.get(name)!;
    c = crc32(new TextEncoder().encode(name), c);
    const count = e.shape.length === 0 ? scalarAsCount(e.dtype, await source.read(e.pieces[0].offset, e.byteLength)) : undefined;
    if (count !== undefined) {
      if (count < 0n) {
        throw new ShardserveError('CrcMismatch', `${source.uri}: tensor '${name}': negative integer scalar ${count} cannot be covered by MindSpore's crc_num`, { file: source.uri, param: name });
      }
      c = crc32OfZeros(c, count);
      continue;
    }
    for (const p of e.pieces) c = await crc32OfRange(source, p.offset, p.length, c);
  }
  return c;
}

/** The value of an integer scalar (what Python's bytes() takes as a count), else undefined. */
export function scalarAsCount(dtype: DType, bytes: Uint8Array): bigint | undefined {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case 'I8': return BigInt(dv.getInt8(0));
    case 'U8': return BigInt(dv.getUint8(0));
    case 'I16': return BigInt(dv.getInt16(0, true));
    case 'U16': return BigInt(dv.getUint16(0, true));
    case 'I32': return BigInt(dv.getInt32(0, true));
    case 'U32': return BigInt(dv.getUint32(0, true));
    case 'I64': return dv.getBigInt64(0, true);
    case 'U64': return dv.getBigUint64(0, true);
    default: return undefined;
  }
}

/** Python's default string order (by code point) for BMP names; what `sorted()` gives MindSpore. */
export function compareCodeUnits(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

export interface UnifiedSafetensorsDir {
  /** Part files, in the order they appear in the map. */
  files: string[];
  /** Tensor name → the part file (key relative to the storage root) holding it. */
  weightMap: Map<string, string>;
  /** `metadata.total_size` when the map has it. */
  totalSize?: number;
  /** `hyper_param.safetensors` when present (step counters and other non-strategy keys). */
  hyperParamFile?: string;
}

/**
 * A MindSpore unified safetensors directory (`unified_safetensors`, reference §1.9):
 * `param_name_map.json` = {"metadata": {"total_size": N}, "weight_map": {name: "part{i}.safetensors"}}.
 * Without a map, a single `.safetensors` file holds every tensor (MindSpore's rule).
 */
export async function readUnifiedSafetensorsDir(storage: Storage, dir = ''): Promise<UnifiedSafetensorsDir> {
  const prefix = dir ? dir.replace(/\/+$/, '') + '/' : '';
  const listed = (await storage.list()).map((o) => o.key).filter((k) => k.startsWith(prefix) && !k.slice(prefix.length).includes('/'));
  const hyper = listed.find((k) => k === `${prefix}hyper_param.safetensors`);
  const mapKey = `${prefix}param_name_map.json`;
  const mapUri = storage.uriOf(mapKey);
  if (!listed.includes(mapKey)) {
    const parts = listed.filter((k) => k.endsWith('.safetensors') && k !== hyper);
    if (parts.length !== 1) {
      throw new ShardserveError('NoNameMap', `${storage.uriOf(dir)}: no param_name_map.json and ${parts.length} .safetensors files (expected the map or exactly one file)`, { file: storage.uriOf(dir) });
    }
    return { files: parts, weightMap: new Map(), hyperParamFile: hyper };
  }
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder().decode(await storage.readAll(mapKey)));
  } catch (e) {
    throw new ShardserveError('BadNameMap', `${mapUri}: not valid JSON (${(e as Error).message})`, { file: mapUri, cause: e });
  }
  if (!isObject(json) || !isObject(json.weight_map)) throw new ShardserveError('BadNameMap', `${mapUri}: expected an object with a "weight_map" object`, { file: mapUri });
  const weightMap = new Map<string, string>();
  const files: string[] = [];
  for (const [name, part] of Object.entries(json.weight_map)) {
    if (typeof part !== 'string' || part.includes('/') || part.includes('\\') || !part.endsWith('.safetensors')) {
      throw new ShardserveError('BadNameMap', `${mapUri}: weight_map['${name}'] is ${JSON.stringify(part)}, expected a .safetensors file name in the directory`, { file: mapUri, param: name });
    }
    const key = prefix + part;
    if (!listed.includes(key)) throw new ShardserveError('MissingPart', `${mapUri}: weight_map['${name}'] names ${part}, which is not in the directory`, { file: mapUri, param: name });
    if (!files.includes(key)) files.push(key);
    weightMap.set(name, key);
  }
  const total = isObject(json.metadata) ? json.metadata.total_size : undefined;
  return { files, weightMap, totalSize: typeof total === 'number' ? total : undefined, hyperParamFile: hyper };
}
