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

/**
 * A key as users keep it: 16, 24 or 32 raw bytes, or the hex text of as many (an optional trailing
 * newline allowed), as read from a key file, a mounted Secret or an environment variable. `where`
 * names the source in the error.
 */
export function parseKey(raw: Uint8Array, where: string): Uint8Array {
  const text = Buffer.from(raw).toString('latin1').trim();
  if (/^[0-9a-fA-F]+$/.test(text) && [32, 48, 64].includes(text.length)) return Buffer.from(text, 'hex');
  if ([16, 24, 32].includes(raw.length)) return raw;
  throw new ShardserveError('BadKey', `${where}: key must be 16, 24 or 32 raw bytes or as many bytes in hex, got ${raw.length} bytes`);
}

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

/**
 * Whether a plaintext opens like a ckpt record: the Checkpoint.value key (0x0A), the record's length
 * (a varint), then the Value.tag key (0x0A). The first byte alone matches a wrong reading once in 256.
 */
function opensLikeRecord(b: Uint8Array): boolean {
  if (b.length === 0 || b[0] !== 0x0a) return false;
  let i = 1;
  while (i < b.length && i < 11 && (b[i] & 0x80) !== 0) i++;
  if (i >= 11) return false; // no varint is that long
  // A segment that ends before the tag key leaves nothing more to check.
  return i + 1 >= b.length || b[i + 1] === 0x0a;
}

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
      // reading opens like a ckpt record; the 12-byte one when neither or both do.
      const decrypt = (iv: Uint8Array) => createDecipheriv(name as 'aes-256-gcm', key, iv, { authTagLength: 16 }).update(cipher);
      if (!legacyIv.length) {
        const twelve = decrypt(ivs[0]);
        if (opensLikeRecord(twelve)) return (legacyIv.length = 12), twelve;
        const sixteen = decrypt(ivs[1]);
        legacyIv.length = opensLikeRecord(sixteen) ? 16 : 12;
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
  segments: Array<CipherSegment & { plainOffset: number; plainLength: number }>;
}

/** Decrypted segments kept at once by a view (each up to one MindSpore segment, 64 MiB). */
const CACHED_SEGMENTS = 3;

/**
 * The plaintext length of a CBC segment without decrypting all of it: CBC decrypts any block from
 * the one before it, so the last block (decrypted with the previous cipher block as IV) gives the
 * PKCS#7 padding. 32 bytes are read per segment.
 */
async function cbcPlainLength(source: ByteSource, seg: CipherSegment, key: Uint8Array, uri: string): Promise<number> {
  const bad = (cause?: unknown) => new ShardserveError('DecryptFailed', `${uri}: encrypted segment at offset ${seg.fileOffset}: ${seg.mode} bad padding (wrong key or corrupted file)`, { file: uri, cause });
  if (seg.cipherLength < 16 || seg.cipherLength % 16 !== 0) throw bad();
  const tail = await source.read(seg.cipherOffset + seg.cipherLength - Math.min(32, seg.cipherLength), Math.min(32, seg.cipherLength));
  const prev = tail.length === 32 ? tail.subarray(0, 16) : seg.iv;
  const d = createDecipheriv(cipherName(seg.mode, key, uri), key, prev);
  d.setAutoPadding(false);
  const last = Buffer.concat([d.update(tail.subarray(tail.length - 16)), d.final()]);
  const pad = last[15];
  if (pad < 1 || pad > 16 || !last.subarray(16 - pad).every((b) => b === pad)) throw bad();
  return seg.cipherLength - pad;
}

/**
 * Opens [0, end) of an encrypted checkpoint as a decrypted view with random access. Segment headers
 * are indexed up front (plus, for CBC, the last block of each segment, which gives its plaintext
 * length); a read decrypts only the segments it touches, whole (GCM's tag covers a segment), and
 * keeps the last few. So memory stays near a few segments instead of the whole plaintext (which is
 * what MindSpore holds), and a rank decrypts the segments holding record headers and its slice.
 */
export async function decryptCheckpoint(source: ByteSource, end: number, opts: DecryptionOptions | undefined, fileMode: DecryptionMode): Promise<DecryptedCheckpoint> {
  const uri = source.uri;
  if (!opts || !opts.key || opts.key.length === 0) {
    throw new ShardserveError('KeyRequired', `${uri}: checkpoint is encrypted (${fileMode}); a decryption key is required`, { file: uri });
  }
  if (opts.mode && opts.mode !== fileMode) {
    throw new ShardserveError('WrongMode', `${uri}: checkpoint is encrypted with ${fileMode}, but ${opts.mode} was given`, { file: uri });
  }
  const key = opts.key;
  cipherName(fileMode, key, uri);
  const segments = await indexCipherSegments(source, end);
  const indexed: DecryptedCheckpoint['segments'] = [];
  let plainOffset = 0;
  for (const seg of segments) {
    if (seg.mode !== fileMode) {
      throw new ShardserveError('CorruptCiphertext', `${uri}: encrypted segment at offset ${seg.fileOffset} uses ${seg.mode}, the file started with ${fileMode}`, { file: uri });
    }
    // GCM is a stream cipher: the plaintext is as long as the ciphertext.
    const plainLength = seg.mode === 'AES-GCM' ? seg.cipherLength : await cbcPlainLength(source, seg, key, uri);
    indexed.push({ ...seg, plainOffset, plainLength });
    plainOffset += plainLength;
  }
  const legacyIv: { length?: GcmIvLength } = {};
  const cache = new Map<number, Promise<Buffer>>();
  const plainOf = (k: number): Promise<Buffer> => {
    let p = cache.get(k);
    if (p) {
      cache.delete(k); // most recently used goes last
    } else {
      const seg = indexed[k];
      p = source.read(seg.cipherOffset, seg.cipherLength).then((cipher) => {
        const plain = decryptSegment(seg, cipher, key, uri, legacyIv);
        if (plain.length !== seg.plainLength) {
          throw new ShardserveError('CorruptCiphertext', `${uri}: encrypted segment at offset ${seg.fileOffset} decrypts to ${plain.length} bytes, expected ${seg.plainLength}`, { file: uri });
        }
        return plain;
      });
      p.catch(() => cache.delete(k));
    }
    cache.set(k, p);
    while (cache.size > CACHED_SEGMENTS) cache.delete(cache.keys().next().value!);
    return p;
  };
  // Legacy GCM files decide their IV reading on the first segment: decrypt it before anything else.
  if (indexed.length > 0) await plainOf(0);
  const size = plainOffset;
  let bytesRead = 0;
  const view: ByteSource = {
    uri,
    size,
    get bytesRead() { return bytesRead; },
    async read(offset: number, length: number) {
      if (!(offset >= 0 && length >= 0 && offset + length <= size)) {
        throw new ShardserveError('OutOfRange', `${uri}: read of ${length} bytes at ${offset} is past the end of the decrypted data (size ${size})`, { file: uri });
      }
      const out = Buffer.allocUnsafe(length);
      // The last segment starting at or before `offset`.
      let lo = 0;
      let hi = indexed.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (indexed[mid].plainOffset <= offset) lo = mid;
        else hi = mid - 1;
      }
      for (let at = offset, k = lo; at < offset + length; k++) {
        const seg = indexed[k];
        if (seg.plainLength === 0) continue;
        const plain = await plainOf(k);
        const from = at - seg.plainOffset;
        const n = Math.min(seg.plainLength - from, offset + length - at);
        plain.copy(out, at - offset, from, from + n);
        at += n;
      }
      bytesRead += length;
      return out;
    },
    async close() {
      cache.clear();
    },
  };
  return { view, mode: fileMode, segments: indexed };
}
