import * as zlib from 'node:zlib';
import type { ByteSource } from '../storage/source.js';

type Crc32 = (data: Uint8Array | string, initial?: number) => number;

let table: Uint32Array | undefined;
/** Table-driven CRC-32 for Node releases before zlib.crc32 (20.15). */
function crc32Fallback(data: Uint8Array | string, initial = 0): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c >>> 0;
    }
  }
  const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
  let c = ~initial >>> 0;
  for (let i = 0; i < bytes.length; i++) c = table[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-32 as zlib/binascii compute it (what MindSpore uses). */
export const crc32: Crc32 = (zlib as unknown as { crc32?: Crc32 }).crc32 ?? crc32Fallback;
export { crc32Fallback };

/** The `.ckpt` CRC trailer: b"crc_num" + the CRC-32 as a 10-byte big-endian integer (§1.6). */
export const CRC_TRAILER_MAGIC = new TextEncoder().encode('crc_num');
export const CRC_TRAILER_LENGTH = 17;

const STREAM_CHUNK = 4 << 20;

/** CRC-32 (zlib) of [offset, offset+length) of a source, read in bounded chunks. */
export async function crc32OfRange(source: ByteSource, offset: number, length: number, initial = 0): Promise<number> {
  let crc = initial;
  for (let done = 0; done < length; ) {
    const n = Math.min(STREAM_CHUNK, length - done);
    crc = crc32(await source.read(offset + done, n), crc);
    done += n;
  }
  return crc;
}

/** The trailer's CRC if `tail` (the last 17 bytes of a file) is one, else undefined. */
export function parseCrcTrailer(tail: Uint8Array): bigint | undefined {
  if (tail.length !== CRC_TRAILER_LENGTH) return undefined;
  for (let i = 0; i < CRC_TRAILER_MAGIC.length; i++) if (tail[i] !== CRC_TRAILER_MAGIC[i]) return undefined;
  let v = 0n;
  for (let i = CRC_TRAILER_MAGIC.length; i < CRC_TRAILER_LENGTH; i++) v = (v << 8n) | BigInt(tail[i]);
  return v;
}

export function encodeCrcTrailer(crc: number): Uint8Array {
  const out = new Uint8Array(CRC_TRAILER_LENGTH);
  out.set(CRC_TRAILER_MAGIC, 0);
  let v = BigInt(crc >>> 0);
  for (let i = CRC_TRAILER_LENGTH - 1; i >= CRC_TRAILER_MAGIC.length; i--) {
    out[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  return out;
}

/** GF(2) matrix (32 columns) times a vector: the CRC register after a linear step. */
function gf2Times(mat: Uint32Array, vec: number): number {
  let sum = 0;
  for (let i = 0; vec !== 0; i++, vec >>>= 1) if (vec & 1) sum ^= mat[i];
  return sum >>> 0;
}

function gf2Square(mat: Uint32Array): Uint32Array {
  const out = new Uint32Array(32);
  for (let i = 0; i < 32; i++) out[i] = gf2Times(mat, mat[i]);
  return out;
}

/**
 * CRC-32 (zlib) continued over `count` zero bytes without touching them, in O(log count): feeding a
 * zero bit is a linear map of the register, so we square its matrix. MindSpore's safetensors
 * crc_num feeds `value` zero bytes for an integer scalar (see safetensorsCrc), which can be huge.
 */
export function crc32OfZeros(crc: number, count: bigint): number {
  if (count <= 0n) return crc >>> 0;
  let op: Uint32Array = new Uint32Array(32);
  op[0] = 0xedb88320;
  for (let i = 1; i < 32; i++) op[i] = (1 << (i - 1)) >>> 0;
  for (let i = 0; i < 3; i++) op = gf2Square(op); // one bit → one byte
  let reg = ~crc >>> 0;
  for (let n = count; n > 0n; n >>= 1n) {
    if (n & 1n) reg = gf2Times(op, reg);
    op = gf2Square(op);
  }
  return ~reg >>> 0;
}
