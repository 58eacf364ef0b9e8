import { createDecipheriv } from 'node:crypto';
import { ShardserveError } from '../errors.js';
import type { DecryptionMode, DecryptionOptions } from '../checkpoint/types.js';
import type { ByteSource } from '../storage/source.js';

/**
 * MindSpore encrypted checkpoints (`save_checkpoint(enc_key=..., enc_mode=...)`), reference §1.7.
 * The file is a run of segments, each one encrypted block of the serialized plaintext:
 *   u32 magic | [16 B GCM tag, AES-GCM only] | i32 L | i32 iv_len (16) | iv | i32 cipher_len | cipher
 * with L = 4 + iv_len + 4 + cipher_len, all integers little-endian. Legacy GCM files have the same
 * magic but no tag field.
 */
export const CIPHER_MAGIC: Record<DecryptionMode, number> = {
  'AES-GCM': 0x7f3a5ed8,
  'AES-CBC': 0x7f3a5ed9,
  'SM4-CBC': 0x7f3a5eda,
};

export function cipherModeOfMagic(magic: number): DecryptionMode | undefined {
  for (const [mode, m] of Object.entries(CIPHER_MAGIC)) if (m === magic) return mode as DecryptionMode;
  return undefined;
}

/** One encrypted segment: where it sits in the file and where its plaintext goes. */
export interface CipherSegment {
  fileOffset: number;
  fileLength: number;
  mode: DecryptionMode;
  /** GCM segment without a stored tag (older MindSpore); decrypted without authentication. */
  legacy: boolean;
  tag?: Uint8Array;
  iv: Uint8Array;
  cipherOffset: number;
  cipherLength: number;
}

const IV_LEN = 16;

function i32(b: Uint8Array, o: number): number {
  return new DataView(b.buffer, b.byteOffset, b.byteLength).getInt32(o, true);
}

/** Walk the segment headers of [0, end) of an encrypted file (reads ~48 bytes per segment). */
export async function indexCipherSegments(source: ByteSource, end: number): Promise<CipherSegment[]> {
  const segments: CipherSegment[] = [];
  const uri = source.uri;
  let pos = 0;
  while (pos < end) {
    const corrupt = (what: string) =>
      new ShardserveError('CorruptCiphertext', `${uri}: encrypted segment at offset ${pos}: ${what}`, { file: uri });
    const h = await source.read(pos, Math.min(48, end - pos));
    if (h.length < 4) throw corrupt('truncated segment header');
    const magic = new DataView(h.buffer, h.byteOffset, h.byteLength).getUint32(0, true);
    const mode = cipherModeOfMagic(magic);
    if (!mode) throw corrupt(`unknown segment magic 0x${magic.toString(16)} (expected 0x7f3a5ed8/9/a)`);
    // Layout candidates: [tag?] L iv_len iv cipher_len. A header is consistent when iv_len is 16
    // and L matches cipher_len; GCM files may or may not carry the tag.
    const tryLayout = (tagLen: number): CipherSegment | undefined => {
      const base = 4 + tagLen;
      if (h.length < base + 8 + IV_LEN + 4 - 0) return undefined;
      const L = i32(h, base);
      const ivLen = i32(h, base + 4);
      if (ivLen !== IV_LEN) return undefined;
      const cipherLength = i32(h, base + 8 + IV_LEN);
      if (cipherLength < 0 || L !== 4 + IV_LEN + 4 + cipherLength) return undefined;
      const fileLength = base + 4 + L;
      if (pos + fileLength > end) return undefined;
      return {
        fileOffset: pos,
        fileLength,
        mode,
        legacy: mode === 'AES-GCM' && tagLen === 0,
        tag: tagLen ? h.slice(4, 4 + tagLen) : undefined,
        iv: h.slice(base + 8, base + 8 + IV_LEN),
        cipherOffset: pos + base + 8 + IV_LEN + 4,
        cipherLength,
      };
    };
    const seg = mode === 'AES-GCM' ? tryLayout(16) ?? tryLayout(0) : tryLayout(0);
    if (!seg) throw corrupt('inconsistent or truncated header (iv_len must be 16 and L = 24 + cipher_len within the file)');
    segments.push(seg);
    pos += seg.fileLength;
  }
  return segments;
}

function cipherName(mode: DecryptionMode, key: Uint8Array, uri: string): string {
  const bad = (expected: string) =>
    new ShardserveError('BadKey', `${uri}: ${mode} needs a ${expected}-byte key, got ${key.length} bytes`, { file: uri });
  if (mode === 'SM4-CBC') {
    if (key.length !== 16) throw bad('16');
    return 'sm4-cbc';
  }
  if (key.length !== 16 && key.length !== 24 && key.length !== 32) throw bad('16, 24 or 32');
  return `aes-${key.length * 8}-${mode === 'AES-GCM' ? 'gcm' : 'cbc'}`;
}

/** GCM IV readings: MindSpore's (first 12 bytes of the stored IV), then the full 16 bytes. */
type GcmIvLength = 12 | 16;

function decryptSegment(seg: CipherSegment, cipher: Uint8Array, key: Uint8Array, uri: string, legacyIv: { length?: GcmIvLength }): Buffer {
  const name = cipherName(seg.mode, key, uri);
  const where = `encrypted segment at offset ${seg.fileOffset}`;
  if (seg.mode === 'AES-GCM') {
    // MindSpore stores a 16-byte IV but its OpenSSL GCM context keeps the default 12-byte IV
    // length, so only the first 12 bytes are used (checked on files MindSpore 2.x wrote); a
    // 16-byte-IV reading is kept as a fallback for writers that did set the length.
    const ivs = [seg.iv.subarray(0, 12), seg.iv];
    if (seg.legacy) {
      // No tag to tell the readings apart: the first segment decides for the whole file, by which
      // reading starts like a ckpt record (0x0A); the 12-byte one when neither or both do.
      const decrypt = (iv: Uint8Array) => createDecipheriv(name as 'aes-256-gcm', key, iv, { authTagLength: 16 }).update(cipher);
      if (!legacyIv.length) {
        const twelve = decrypt(ivs[0]);
        if (twelve[0] === 0x0a) return (legacyIv.length = 12), twelve;
        const sixteen = decrypt(ivs[1]);
        legacyIv.length = sixteen[0] === 0x0a ? 16 : 12;
        return legacyIv.length === 16 ? sixteen : twelve;
      }
      return decrypt(legacyIv.length === 12 ? ivs[0] : ivs[1]);
    }
    let cause: unknown;
    for (const iv of ivs) {
      const d = createDecipheriv(name as 'aes-256-gcm', key, iv, { authTagLength: 16 });
      const out = d.update(cipher);
      d.setAuthTag(seg.tag!);
      try {
        return Buffer.concat([out, d.final()]);
      } catch (e) {
        cause = e;
      }
    }
    throw new ShardserveError('DecryptFailed', `${uri}: ${where}: AES-GCM tag mismatch (wrong key or corrupted file)`, { file: uri, cause });
  }
  const d = createDecipheriv(name, key, seg.iv);
  try {
    return Buffer.concat([d.update(cipher), d.final()]);
  } catch (e) {
    throw new ShardserveError('DecryptFailed', `${uri}: ${where}: ${seg.mode} bad padding (wrong key or corrupted file)`, { file: uri, cause: e });
  }
}

/** A ByteSource over bytes held in memory (the decrypted view of an encrypted checkpoint). */
export function memorySource(uri: string, bytes: Uint8Array): ByteSource {
  let bytesRead = 0;
  return {
    uri,
    size: bytes.length,
    get bytesRead() { return bytesRead; },
    async read(offset: number, length: number) {
      if (!(offset >= 0 && length >= 0 && offset + length <= bytes.length)) {
        throw new ShardserveError('OutOfRange', `${uri}: read of ${length} bytes at ${offset} is past the end of the decrypted data (size ${bytes.length})`, { file: uri });
      }
      bytesRead += length;
      return bytes.slice(offset, offset + length); // a copy: callers may reuse the buffer they get
    },
    async close() {},
  };
}

export interface DecryptedCheckpoint {
  view: ByteSource;
  mode: DecryptionMode;
  /** Kept so a later version can decrypt only the segments a plan needs, instead of all of them. */
  segments: Array<CipherSegment & { plainOffset: number; plainLength: number }>;
}

/**
 * Decrypt [0, end) of an encrypted checkpoint, segment by segment. The decrypted view holds the
 * whole plaintext in memory (MindSpore does the same; peak memory = plaintext size): the ciphers
 * are block-chained per 64 MiB segment, so random access would need per-segment decryption,
 * which the segment index below makes possible later.
 */
export async function decryptCheckpoint(source: ByteSource, end: number, opts: DecryptionOptions | undefined, fileMode: DecryptionMode): Promise<DecryptedCheckpoint> {
  const uri = source.uri;
  if (!opts || !opts.key || opts.key.length === 0) {
    throw new ShardserveError('KeyRequired', `${uri}: checkpoint is encrypted (${fileMode}); a decryption key is required`, { file: uri });
  }
  if (opts.mode && opts.mode !== fileMode) {
    throw new ShardserveError('WrongMode', `${uri}: checkpoint is encrypted with ${fileMode}, but ${opts.mode} was given`, { file: uri });
  }
  cipherName(fileMode, opts.key, uri);
  const segments = await indexCipherSegments(source, end);
  const plain: Buffer[] = [];
  const indexed: DecryptedCheckpoint['segments'] = [];
  let plainOffset = 0;
  const legacyIv: { length?: GcmIvLength } = {};
  for (const seg of segments) {
    if (seg.mode !== fileMode) {
      throw new ShardserveError('CorruptCiphertext', `${uri}: encrypted segment at offset ${seg.fileOffset} uses ${seg.mode}, the file started with ${fileMode}`, { file: uri });
    }
    const cipher = await source.read(seg.cipherOffset, seg.cipherLength);
    const p = decryptSegment(seg, cipher, opts.key, uri, legacyIv);
    indexed.push({ ...seg, plainOffset, plainLength: p.length });
    plainOffset += p.length;
    plain.push(p);
  }
  return { view: memorySource(uri, Buffer.concat(plain)), mode: fileMode, segments: indexed };
}
