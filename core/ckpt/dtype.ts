import type { DType } from '../dtype.js';

/**
 * MindSpore `tensor_type` strings (str(mindspore dtype)), reference §1.3. Matched
 * case-insensitively, so the legacy spelling `Uint8` and the modern `UInt8` both map to U8.
 */
const CKPT_TO_DTYPE: Record<string, DType> = {
  int8: 'I8', uint8: 'U8', int16: 'I16', uint16: 'U16', int32: 'I32', uint32: 'U32', int64: 'I64', uint64: 'U64',
  float16: 'F16', float32: 'F32', float64: 'F64', bfloat16: 'BF16', bool: 'BOOL',
};

/** Modern spelling the writer uses (what MindSpore ≥2.x writes). */
export const DTYPE_TO_CKPT: Record<DType, string> = {
  I8: 'Int8', U8: 'UInt8', I16: 'Int16', U16: 'UInt16', I32: 'Int32', U32: 'UInt32', I64: 'Int64', U64: 'UInt64',
  F16: 'Float16', F32: 'Float32', F64: 'Float64', BF16: 'BFloat16', BOOL: 'Bool',
};

export function ckptTypeToDType(tensorType: string): DType | undefined {
  return CKPT_TO_DTYPE[tensorType.toLowerCase()];
}

/** A `str` value as MindSpore stores it: numpy `U` array bytes (UCS-4, little-endian). */
export function utf32le(s: string): Uint8Array {
  const cps = [...s].map((c) => c.codePointAt(0)!);
  const out = new Uint8Array(cps.length * 4);
  const dv = new DataView(out.buffer);
  cps.forEach((cp, i) => dv.setUint32(i * 4, cp, true));
  return out;
}
