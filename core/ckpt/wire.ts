/**
 * Protobuf wire-format primitives for hand-written decoders (ckpt records, strategy files).
 * Every decode failure throws WireError; callers turn it into a ShardserveError naming the file,
 * so a corrupt input can never escape as a RangeError or produce a huge allocation.
 */
export class WireError extends Error {
  constructor(message: string, readonly offset: number) {
    super(message);
  }
}

export const WIRE_VARINT = 0;
export const WIRE_FIXED64 = 1;
export const WIRE_LEN = 2;
export const WIRE_FIXED32 = 5;

/** A varint decoded as 64-bit: `value` is exact when it fits 2^53; `low32` for int32 truncation. */
export interface Varint {
  value: bigint;
  end: number;
}

/** Decode a varint at `pos` (at most 10 bytes); `limit` is the end of the enclosing message. */
export function readVarint(buf: Uint8Array, pos: number, limit: number): Varint {
  let result = 0n;
  let shift = 0n;
  for (let i = 0; i < 10; i++) {
    if (pos + i >= limit) throw new WireError('varint runs past the end of its message', pos);
    const b = buf[pos + i];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return { value: BigInt.asUintN(64, result), end: pos + i + 1 };
    shift += 7n;
  }
  throw new WireError('varint longer than 10 bytes', pos);
}

/** A non-negative length/size field as a safe JS number. */
export function readLength(buf: Uint8Array, pos: number, limit: number): { value: number; end: number } {
  const v = readVarint(buf, pos, limit);
  if (v.value > BigInt(Number.MAX_SAFE_INTEGER)) throw new WireError(`length ${v.value} is too large`, pos);
  return { value: Number(v.value), end: v.end };
}

/** int64 field value as a JS number (two's complement); throws when it is not a safe integer. */
export function asInt64(v: bigint, pos: number): number {
  const s = BigInt.asIntN(64, v);
  if (s > BigInt(Number.MAX_SAFE_INTEGER) || s < BigInt(Number.MIN_SAFE_INTEGER)) throw new WireError(`integer ${s} is too large`, pos);
  return Number(s);
}

/** int32 field: decode as 64-bit and truncate, as protobuf does (−1 arrives as a 10-byte varint). */
export function asInt32(v: bigint): number {
  return Number(BigInt.asIntN(32, v));
}

/** uint32 field: truncate to 32 bits. */
export function asUint32(v: bigint): number {
  return Number(BigInt.asUintN(32, v));
}

export interface FieldKey {
  field: number;
  wire: number;
  end: number;
}

export function readKey(buf: Uint8Array, pos: number, limit: number): FieldKey {
  const k = readVarint(buf, pos, limit);
  if (k.value > 0xffffffffn) throw new WireError(`field key ${k.value} is out of range`, pos);
  const n = Number(k.value);
  const field = Math.floor(n / 8);
  const wire = n & 7;
  if (field === 0) throw new WireError('field number 0 is invalid', pos);
  if (wire !== WIRE_VARINT && wire !== WIRE_FIXED64 && wire !== WIRE_LEN && wire !== WIRE_FIXED32) {
    throw new WireError(`unsupported wire type ${wire} for field ${field}`, pos);
  }
  return { field, wire, end: k.end };
}

/** Position after the value of a field whose key has been read; checks it stays inside `limit`. */
export function skipField(buf: Uint8Array, pos: number, wire: number, limit: number): number {
  let end: number;
  switch (wire) {
    case WIRE_VARINT:
      return readVarint(buf, pos, limit).end;
    case WIRE_FIXED64:
      end = pos + 8;
      break;
    case WIRE_FIXED32:
      end = pos + 4;
      break;
    case WIRE_LEN: {
      const l = readLength(buf, pos, limit);
      end = l.end + l.value;
      break;
    }
    default:
      throw new WireError(`unsupported wire type ${wire}`, pos);
  }
  if (end > limit) throw new WireError('field runs past the end of its message', pos);
  return end;
}

/** A length-delimited field's payload bounds [start, end) (checked against `limit`). */
export function readLenBounds(buf: Uint8Array, pos: number, limit: number): { start: number; end: number } {
  const l = readLength(buf, pos, limit);
  const end = l.end + l.value;
  if (end > limit) throw new WireError('length-delimited field runs past the end of its message', pos);
  return { start: l.end, end };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

export function decodeUtf8(bytes: Uint8Array, pos: number): string {
  try {
    return utf8.decode(bytes);
  } catch {
    throw new WireError('string field is not valid UTF-8', pos);
  }
}

/** Encoder side: a growable byte buffer with protobuf primitives. */
export class WireWriter {
  private parts: Uint8Array[] = [];
  private small: number[] = [];

  private flush(): void {
    if (this.small.length) {
      this.parts.push(Uint8Array.from(this.small));
      this.small = [];
    }
  }

  varint(v: number | bigint): this {
    let x = BigInt.asUintN(64, BigInt(v));
    while (x >= 0x80n) {
      this.small.push(Number(x & 0x7fn) | 0x80);
      x >>= 7n;
    }
    this.small.push(Number(x));
    return this;
  }

  key(field: number, wire: number): this {
    return this.varint(field * 8 + wire);
  }

  bytes(field: number, data: Uint8Array): this {
    this.key(field, WIRE_LEN).varint(data.length);
    this.flush();
    this.parts.push(data);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  finish(): Uint8Array {
    this.flush();
    const out = new Uint8Array(this.parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of this.parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
}

/** Bytes of a varint encoding (for layout arithmetic in writers). */
export function varintSize(v: number): number {
  let n = 1;
  while (v >= 0x80) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}
