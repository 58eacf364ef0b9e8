import { createCipheriv, randomBytes } from 'node:crypto';
import type { DecryptionMode } from '../checkpoint/types.js';
import { CIPHER_MAGIC } from './decrypt.js';
import { WIRE_LEN, WireWriter } from './wire.js';

export { utf32le } from './dtype.js';

/**
 * Builders of raw `.ckpt` bytes for tests and the fuzzer: the knobs cover what real files vary in
 * (field order, packed dims, legacy scalars, maptensor records, encryption).
 */
export interface RecordOptions {
  packedDims?: boolean;
  /** Order of the TensorProto fields; MindSpore writes dims, type, content. */
  order?: Array<'dims' | 'type' | 'content'>;
}

export function tensorProto(type: string, dims: number[], content: Uint8Array, opts: RecordOptions = {}): Uint8Array {
  const w = new WireWriter();
  for (const part of opts.order ?? ['dims', 'type', 'content']) {
    if (part === 'dims') {
      if (opts.packedDims) {
        const p = new WireWriter();
        for (const d of dims) p.varint(d);
        w.bytes(1, p.finish());
      } else for (const d of dims) w.key(1, 0).varint(d);
    } else if (part === 'type') w.string(2, type);
    else w.bytes(3, content);
  }
  return w.finish();
}

/** One top-level `Checkpoint.value` record (`0x0A len Value`). */
export function ckptRecord(tag: string, type: string, dims: number[], content: Uint8Array, opts: RecordOptions = {}): Uint8Array {
  const value = new WireWriter().string(1, tag).bytes(2, tensorProto(type, dims, content, opts)).finish();
  return new WireWriter().bytes(1, value).finish();
}

export function mapTensorRecord(tag: string): Uint8Array {
  const map = new WireWriter()
    .bytes(1, tensorProto('int32', [2], new Uint8Array(8)))
    .bytes(1, tensorProto('float32', [2, 1], new Uint8Array(8)))
    .bytes(1, tensorProto('int32', [2], new Uint8Array(8)))
    .finish();
  const value = new WireWriter().string(1, tag).key(3, WIRE_LEN).varint(map.length).finish();
  const v = Buffer.concat([value, map]);
  return new WireWriter().bytes(1, v).finish();
}

/** Encrypt a plaintext the way MindSpore's crypto.cc does, in segments of `blockSize` bytes. */
export function encryptCkpt(plain: Uint8Array, key: Uint8Array, mode: DecryptionMode, opts: { blockSize?: number; legacyGcm?: boolean; gcmIvLength?: 12 | 16; /** Every block's IV (default: random), for byte-stable fixtures. */ iv?: Uint8Array } = {}): Uint8Array {
  const blockSize = opts.blockSize ?? 64 << 20;
  const out: Uint8Array[] = [];
  for (let off = 0; off < plain.length; off += blockSize) {
    const block = plain.subarray(off, off + blockSize);
    const iv = opts.iv ? Buffer.from(opts.iv) : randomBytes(16);
    const name = mode === 'SM4-CBC' ? 'sm4-cbc' : `aes-${key.length * 8}-${mode === 'AES-GCM' ? 'gcm' : 'cbc'}`;
    // MindSpore's GCM uses the first 12 bytes of the stored 16-byte IV (see decrypt.ts).
    const c = createCipheriv(name, key, mode === 'AES-GCM' ? iv.subarray(0, opts.gcmIvLength ?? 12) : iv);
    const cipher = Buffer.concat([c.update(block), c.final()]);
    const head = Buffer.alloc(4);
    head.writeUInt32LE(CIPHER_MAGIC[mode]);
    const tag = mode === 'AES-GCM' && !opts.legacyGcm ? (c as unknown as { getAuthTag(): Buffer }).getAuthTag() : Buffer.alloc(0);
    const ints = Buffer.alloc(8);
    ints.writeInt32LE(4 + 16 + 4 + cipher.length, 0);
    ints.writeInt32LE(16, 4);
    const clen = Buffer.alloc(4);
    clen.writeInt32LE(cipher.length);
    out.push(head, tag, ints, iv, clen, cipher);
  }
  return Buffer.concat(out);
}
