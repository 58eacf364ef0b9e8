import { DTYPE_BYTES, type DType, sameShape } from '../dtype.js';
import { ShardserveError } from '../errors.js';
import type { ByteRange, CheckpointIndex, DecryptionOptions, StringEntry, TensorEntry } from '../checkpoint/types.js';
import type { ByteSource } from '../storage/source.js';
import { ckptTypeToDType } from './dtype.js';
import { CRC_TRAILER_LENGTH, crc32OfRange, parseCrcTrailer } from './crc.js';
import { cipherModeOfMagic, decryptCheckpoint } from './decrypt.js';
import {
  WIRE_FIXED32, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT, WireError, asInt64, decodeUtf8, readKey, readLength, readVarint,
} from './wire.js';

export interface IndexCkptOptions {
  decryption?: DecryptionOptions;
  verifyCrc?: boolean;
  /**
   * Where records probably start (those of a sibling file with the same layout, e.g. another rank
   * of the same training job): their header windows are fetched all at once instead of one after
   * the other. Only the order of reads changes: the walk checks every record as usual, and a wrong
   * guess costs a few spare header reads. Ignored for encrypted files.
   */
  prefetchRecords?: readonly number[];
}

/**
 * Bytes fetched per record header; a MindSpore header (tag, dims, type) is ~100 bytes, and a longer
 * one gets further windows where it runs past the first. Small enough for Node's buffer pool (windows
 * under 4 KiB are slices of it, not allocations of their own).
 */
const HEADER_WINDOW = 1024;
/**
 * After a record of at most SMALL_RECORD bytes, the next window is RUN_WINDOW long: runs of small
 * records (norm weights, biases, optimizer scalars) are then read many to a window, not one each.
 * Windows read ahead are joined the same way when their starts are that close.
 */
const SMALL_RECORD = 16 * 1024;
const RUN_WINDOW = 64 * 1024;
/** Sanity bounds on header fields, so a lying length cannot make us fetch or allocate much. */
const MAX_TAG_BYTES = 64 * 1024;
const MAX_TYPE_BYTES = 256;
const MAX_PACKED_DIMS_BYTES = 1024;
const MAX_DIMS = 64;

/**
 * Index a MindSpore `.ckpt` (reference §1): walk the top-level `Checkpoint.value` records, reading
 * only their headers, and record where each parameter's `tensor_content` lies. Adjacent records with
 * one tag are the pieces of one tensor (MindSpore splits every 512 MiB); a tag that reappears later
 * is rejected. An encrypted file is decrypted first and `index.source` is the decrypted view.
 */
export async function indexCkpt(source: ByteSource, opts: IndexCkptOptions = {}): Promise<CheckpointIndex> {
  const uri = source.uri;
  const notes: string[] = [];
  if (source.size === 0) throw new ShardserveError('EmptyFile', `${uri}: checkpoint file is empty`, { file: uri });

  let end = source.size;
  let trailerCrc: bigint | undefined;
  if (end >= CRC_TRAILER_LENGTH) {
    trailerCrc = parseCrcTrailer(await source.read(end - CRC_TRAILER_LENGTH, CRC_TRAILER_LENGTH));
    if (trailerCrc !== undefined) end -= CRC_TRAILER_LENGTH;
  }

  let walkSource = source;
  let walkEnd = end;
  let encryption: CheckpointIndex['encryption'] = 'none';
  let crc: CheckpointIndex['crc'] = trailerCrc === undefined ? 'absent' : 'not-checked';
  const head = end >= 4 ? await source.read(0, 4) : undefined;
  const fileMode = head ? cipherModeOfMagic(new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true)) : undefined;
  if (fileMode) {
    const dec = await decryptCheckpoint(source, end, opts.decryption, fileMode);
    walkSource = dec.view;
    walkEnd = dec.view.size;
    encryption = fileMode;
    if (trailerCrc !== undefined) notes.push('crc_num trailer of an encrypted checkpoint is not checked (MindSpore does not accumulate a CRC when encrypting)');
  } else {
    if (opts.decryption?.key?.length) notes.push('a decryption key was given but the checkpoint is not encrypted');
    if (opts.verifyCrc && trailerCrc !== undefined) {
      const actual = await crc32OfRange(source, 0, end);
      if (BigInt(actual) !== trailerCrc) {
        throw new ShardserveError('CrcMismatch', `${uri}: CRC check failed: trailer says ${trailerCrc}, the data has ${actual}`, { file: uri });
      }
      crc = 'verified';
    }
  }
  if (walkEnd === 0) throw new ShardserveError('EmptyFile', `${uri}: checkpoint holds no records`, { file: uri });

  const records = new RecordWalker(walkSource, walkEnd);
  if (opts.prefetchRecords && walkSource === source) records.prefetch(opts.prefetchRecords);
  const builder = new EntryBuilder(uri, walkSource, notes);
  try {
    for (let pos = 0; pos < walkEnd; ) {
      const rec = await records.readRecord(pos);
      await builder.add(rec);
      pos = rec.end;
    }
    await builder.finish();
  } catch (e) {
    if (e instanceof WireError) {
      throw new ShardserveError('CorruptCheckpoint', `${uri}: corrupt checkpoint at offset ${e.offset}: ${e.message}`, { file: uri, cause: e });
    }
    throw e;
  }
  return {
    format: 'mindspore-ckpt',
    source: walkSource,
    tensors: builder.tensors,
    strings: builder.strings,
    notes,
    crc,
    encryption,
    metadata: {},
  };
}

/** One `Checkpoint.value` record, header decoded, payload located. */
interface CkptRecord {
  offset: number;
  end: number;
  tag: string;
  kind: 'tensor' | 'maptensor';
  tensorType: string;
  dims: number[];
  content: ByteRange;
}

/** Raised inside a synchronous parse when the bytes it needs are in no window yet. */
class NeedBytes {
  constructor(readonly pos: number, readonly n: number) {}
}

/**
 * Reads record headers through small windows over the source, never the payloads. A record is
 * parsed synchronously from the windows read so far; when it needs bytes outside them, they are
 * read (at once when the source reads synchronously and nothing was read ahead there, else
 * awaited) and the record is parsed again from its start, so a header costs one read and no
 * promise per field.
 */
class RecordWalker {
  /** Windows read for the record being parsed; the first usually holds its whole header. */
  private windows: { base: number; buf: Uint8Array }[] = [];
  /** Length of the next window read: HEADER_WINDOW, or RUN_WINDOW after a small record. */
  private window = HEADER_WINDOW;
  /** Header windows asked for ahead of the walk, by offset (see prefetch). */
  private readonly ahead = new Map<number, Promise<Uint8Array>>();

  constructor(private readonly source: ByteSource, private readonly end: number) {}

  /**
   * Starts reading the header windows at these offsets, all at once; the walk takes them as it gets
   * there. Starts within RUN_WINDOW of each other share one read.
   */
  prefetch(offsets: readonly number[]): void {
    const starts = [...new Set(offsets)].filter((pos) => pos >= 0 && pos < this.end && !this.ahead.has(pos)).sort((a, b) => a - b);
    for (let i = 0; i < starts.length; ) {
      const first = starts[i];
      let j = i + 1;
      while (j < starts.length && starts[j] - first < RUN_WINDOW) j++;
      const group = starts.slice(i, j);
      const last = group[group.length - 1];
      const read = this.source.read(first, Math.min(last + HEADER_WINDOW, this.end) - first);
      read.catch(() => {}); // a failed read ahead is read again, and reported, by the walk
      for (const pos of group) this.ahead.set(pos, read.then((buf) => buf.subarray(pos - first)));
      i = j;
    }
  }

  async readRecord(offset: number): Promise<CkptRecord> {
    // A window that holds the record's start is kept (small records share one).
    this.windows = this.windows.filter((w) => offset >= w.base && offset < w.base + w.buf.length).slice(-1);
    for (;;) {
      try {
        const rec = this.parseRecord(offset);
        this.window = rec.end - offset <= SMALL_RECORD ? RUN_WINDOW : HEADER_WINDOW;
        return rec;
      } catch (e) {
        if (!(e instanceof NeedBytes)) throw e;
        await this.fill(e.pos, e.n);
      }
    }
  }

  private windowLength(pos: number, n: number): number {
    const len = Math.min(Math.max(n, this.window), this.end - pos);
    if (len < n) throw new WireError('record runs past the end of the file', pos);
    return len;
  }

  /** Reads the window at `pos` (taking the one read ahead there, when it is long enough). */
  private async fill(pos: number, n: number): Promise<void> {
    const len = this.windowLength(pos, n);
    const early = this.ahead.get(pos);
    this.ahead.delete(pos);
    const got = early ? await early.catch(() => undefined) : undefined;
    this.windows.push({ base: pos, buf: got && got.length >= n ? got : await this.source.read(pos, len) });
  }

  /** Exactly `n` bytes at `pos`, from a window (read now when that can be done synchronously). */
  private bytes(pos: number, n: number): Uint8Array {
    for (const w of this.windows) {
      if (pos >= w.base && pos + n <= w.base + w.buf.length) return w.buf.subarray(pos - w.base, pos - w.base + n);
    }
    if (!this.source.readSync || this.ahead.has(pos)) throw new NeedBytes(pos, n);
    const buf = this.source.readSync(pos, this.windowLength(pos, n));
    this.windows.push({ base: pos, buf });
    return buf.subarray(0, n);
  }

  private varint(pos: number, limit: number): { value: bigint; end: number } {
    const n = Math.min(10, limit - pos);
    if (n <= 0) throw new WireError('varint runs past the end of its message', pos);
    const v = readVarint(this.bytes(pos, n), 0, n);
    return { value: v.value, end: pos + v.end };
  }

  private key(pos: number, limit: number) {
    const n = Math.min(5, limit - pos);
    if (n <= 0) throw new WireError('field key runs past the end of its message', pos);
    const k = readKey(this.bytes(pos, n), 0, n);
    return { field: k.field, wire: k.wire, end: pos + k.end };
  }

  /** [start, end) of a length-delimited payload whose length varint sits at `pos`. */
  private lenBounds(pos: number, limit: number): { start: number; end: number } {
    const n = Math.min(10, limit - pos);
    if (n <= 0) throw new WireError('length runs past the end of its message', pos);
    const l = readLength(this.bytes(pos, n), 0, n);
    const start = pos + l.end;
    if (start + l.value > limit) throw new WireError('length-delimited field runs past the end of its message', pos);
    return { start, end: start + l.value };
  }

  private skip(pos: number, wire: number, limit: number): number {
    let end: number;
    if (wire === WIRE_VARINT) return this.varint(pos, limit).end;
    else if (wire === WIRE_FIXED64) end = pos + 8;
    else if (wire === WIRE_FIXED32) end = pos + 4;
    else end = this.lenBounds(pos, limit).end;
    if (end > limit) throw new WireError('field runs past the end of its message', pos);
    return end;
  }

  private string(b: { start: number; end: number }, max: number, what: string): string {
    if (b.end - b.start > max) throw new WireError(`${what} is ${b.end - b.start} bytes (at most ${max} expected)`, b.start);
    return decodeUtf8(this.bytes(b.start, b.end - b.start), b.start);
  }

  private parseRecord(offset: number): CkptRecord {
    const k = this.key(offset, this.end);
    if (k.field !== 1 || k.wire !== WIRE_LEN) {
      throw new WireError(`expected a Checkpoint.value record (field 1, length-delimited), found field ${k.field} wire type ${k.wire}`, offset);
    }
    const value = this.lenBounds(k.end, this.end);
    let tag: string | undefined;
    let tensor: { start: number; end: number } | undefined;
    let kind: CkptRecord['kind'] = 'tensor';
    for (let p = value.start; p < value.end; ) {
      const f = this.key(p, value.end);
      if (f.wire === WIRE_LEN && (f.field === 1 || f.field === 2 || f.field === 3)) {
        const b = this.lenBounds(f.end, value.end);
        if (f.field === 1) tag = this.string(b, MAX_TAG_BYTES, 'parameter name');
        else {
          tensor = b;
          kind = f.field === 2 ? 'tensor' : 'maptensor';
        }
        p = b.end;
      } else {
        p = this.skip(f.end, f.wire, value.end);
      }
    }
    if (tag === undefined) throw new WireError('record has no parameter name (Value.tag)', offset);
    if (!tensor) throw new WireError(`record of '${tag}' has no tensor`, offset);
    const rec: CkptRecord = { offset, end: value.end, tag, kind, tensorType: '', dims: [], content: { offset: 0, length: 0 } };
    if (kind === 'maptensor') return rec;

    let type: string | undefined;
    let content: ByteRange | undefined;
    for (let p = tensor.start; p < tensor.end; ) {
      const f = this.key(p, tensor.end);
      if (f.field === 1 && f.wire === WIRE_VARINT) {
        const v = this.varint(f.end, tensor.end);
        this.pushDim(rec, v.value, f.end);
        p = v.end;
      } else if (f.field === 1 && f.wire === WIRE_LEN) {
        const b = this.lenBounds(f.end, tensor.end);
        if (b.end - b.start > MAX_PACKED_DIMS_BYTES) throw new WireError(`packed dims of '${tag}' are ${b.end - b.start} bytes long`, f.end);
        for (let q = b.start; q < b.end; ) {
          const v = this.varint(q, b.end);
          this.pushDim(rec, v.value, q);
          q = v.end;
        }
        p = b.end;
      } else if (f.field === 2 && f.wire === WIRE_LEN) {
        const b = this.lenBounds(f.end, tensor.end);
        type = this.string(b, MAX_TYPE_BYTES, `tensor_type of '${tag}'`);
        p = b.end;
      } else if (f.field === 3 && f.wire === WIRE_LEN) {
        const b = this.lenBounds(f.end, tensor.end);
        content = { offset: b.start, length: b.end - b.start };
        p = b.end;
      } else {
        p = this.skip(f.end, f.wire, tensor.end);
      }
    }
    if (type === undefined) throw new WireError(`tensor of '${tag}' has no tensor_type`, tensor.start);
    if (!content) throw new WireError(`tensor of '${tag}' has no tensor_content`, tensor.start);
    rec.tensorType = type;
    rec.content = content;
    return rec;
  }

  private pushDim(rec: CkptRecord, v: bigint, pos: number): void {
    const d = asInt64(v, pos);
    if (d < 0) throw new WireError(`dimension ${d} of '${rec.tag}' is negative`, pos);
    if (rec.dims.length >= MAX_DIMS) throw new WireError(`'${rec.tag}' has more than ${MAX_DIMS} dims`, pos);
    rec.dims.push(d);
  }
}

/** A parameter being assembled from adjacent same-tag records. */
interface PendingParam {
  first: CkptRecord;
  pieces: ByteRange[];
}

/** Joins adjacent records per tag and turns finished parameters into index entries. */
class EntryBuilder {
  readonly tensors = new Map<string, TensorEntry>();
  readonly strings = new Map<string, StringEntry>();
  private readonly seen = new Set<string>();
  private pending: PendingParam | undefined;

  constructor(private readonly uri: string, private readonly source: ByteSource, private readonly notes: string[]) {}

  async add(rec: CkptRecord): Promise<void> {
    const p = this.pending;
    if (p && p.first.tag === rec.tag) {
      if (rec.kind !== p.first.kind || rec.tensorType.toLowerCase() !== p.first.tensorType.toLowerCase() || !sameShape(rec.dims, p.first.dims)) {
        throw this.error('InconsistentChunks', rec.tag,
          `record at offset ${rec.offset} (${rec.tensorType || rec.kind} [${rec.dims}]) disagrees with the earlier chunk (${p.first.tensorType || p.first.kind} [${p.first.dims}])`);
      }
      p.pieces.push(rec.content);
      return;
    }
    if (this.seen.has(rec.tag)) {
      throw this.error('DuplicateParameter', rec.tag,
        `appears again at offset ${rec.offset} after other parameters (only adjacent chunks of one parameter may repeat its name)`);
    }
    await this.finish();
    this.seen.add(rec.tag);
    this.pending = { first: rec, pieces: [rec.content] };
  }

  async finish(): Promise<void> {
    const p = this.pending;
    this.pending = undefined;
    if (!p) return;
    const { tag, kind, tensorType, dims } = p.first;
    if (kind === 'maptensor') {
      this.notes.push(`skipped '${tag}': maptensor (MapParameter) values are not supported`);
      return;
    }
    const byteLength = p.pieces.reduce((s, r) => s + r.length, 0);
    if (tensorType.toLowerCase() === 'str') {
      if (byteLength % 4 !== 0) throw this.error('BadString', tag, `str value is ${byteLength} bytes, not a multiple of 4 (UTF-32)`);
      const parts: Uint8Array[] = [];
      for (const r of p.pieces) parts.push(await this.source.read(r.offset, r.length));
      this.strings.set(tag, { name: tag, value: decodeUtf32le(Buffer.concat(parts), (m) => this.error('BadString', tag, m)) });
      return;
    }
    // qint4x2: two int4 values per byte, and MindSpore's dims count the packed bytes (checked on
    // files MindSpore 2.x wrote), so the bytes are an I8 tensor of that shape; noted for merge/inspect.
    const int4 = tensorType.toLowerCase() === 'int4';
    const dtype = int4 ? 'I8' : ckptTypeToDType(tensorType);
    if (!dtype) {
      this.notes.push(`skipped '${tag}': unknown tensor_type '${tensorType}'`);
      return;
    }
    if (int4) this.notes.push(`tensor '${tag}' is Int4 (qint4x2, two values per byte) stored as I8`);
    // MindSpore ≤1.x wrote scalars as dims=[0]; its loader maps [0] to a scalar, and so do we.
    const shape = dims.length === 1 && dims[0] === 0 ? [] : dims;
    const expected = expectedBytes(dtype, shape);
    if (expected !== byteLength) {
      throw this.error('SizeMismatch', tag, `tensor_content is ${byteLength} bytes, but ${tensorType} [${shape}] needs ${expected ?? 'more than 2^53'}`);
    }
    this.tensors.set(tag, { name: tag, dtype, shape, pieces: p.pieces, byteLength });
  }

  private error(code: string, param: string, what: string): ShardserveError {
    return new ShardserveError(code, `${this.uri}: parameter '${param}': ${what}`, { file: this.uri, param });
  }
}

function expectedBytes(dtype: DType, shape: number[]): number | undefined {
  let n = DTYPE_BYTES[dtype];
  for (const d of shape) {
    n *= d;
    if (!Number.isSafeInteger(n)) return undefined;
  }
  return n;
}

/** numpy `U` array bytes (UCS-4, little-endian) → string; trailing NULs are numpy padding. */
function decodeUtf32le(bytes: Uint8Array, bad: (m: string) => Error): string {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let out = '';
  let n = bytes.length / 4;
  while (n > 0 && dv.getUint32((n - 1) * 4, true) === 0) n--;
  for (let i = 0; i < n; i++) {
    const cp = dv.getUint32(i * 4, true);
    if (cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) throw bad(`str value has an invalid code point 0x${cp.toString(16)}`);
    out += String.fromCodePoint(cp);
  }
  return out;
}
