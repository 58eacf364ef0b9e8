import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { DTYPE_BYTES, type DType } from '../dtype.js';
import { ShardserveError } from '../errors.js';
import { crc32, crc32OfZeros, encodeCrcTrailer } from '../ckpt/crc.js';
import { DTYPE_TO_CKPT, utf32le } from '../ckpt/dtype.js';
import { WIRE_LEN, WIRE_VARINT, WireWriter } from '../ckpt/wire.js';
import { compareCodeUnits, scalarAsCount } from '../safetensors/reader.js';
import type { ByteRange, CheckpointFormat } from './types.js';

export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

export interface TensorFileWriterOptions {
  /** safetensors `__metadata__` (e.g. `{ format: 'ms' }`); not used by .ckpt. */
  metadata?: Record<string, string>;
  /** .ckpt: append MindSpore's `crc_num` trailer; safetensors: add MindSpore's `crc_num` metadata. */
  crc?: boolean;
  /** .ckpt only: `str` values, written after the tensors as MindSpore writes them (UTF-32LE, dims [0]). */
  strings?: { name: string; value: string }[];
  /** .ckpt record size limit; MindSpore splits every 512 MiB. Smaller values are for tests. */
  ckptChunkBytes?: number;
}

export interface TensorFileWriter {
  /** Final path (the data goes to a temp file next to it until commit). */
  readonly path: string;
  /** Size of the finished file in bytes. */
  readonly size: number;
  /** Write bytes of a tensor's C-order data at `byteOffsetInTensor`; any order, any time. */
  writeAt(name: string, byteOffsetInTensor: number, bytes: Uint8Array): Promise<void>;
  /** Check every tensor was written in full, add the CRC if asked, fsync and rename into place. */
  commit(): Promise<void>;
  /** Remove the temp file; nothing is left behind. */
  abort(): Promise<void>;
}

export const MINDSPORE_CHUNK_BYTES = 512 * 1024 * 1024;
const CRC_PLACEHOLDER = '4294967295';
const STREAM_CHUNK = 4 << 20;

/** Where each tensor's bytes go in the file: its data is the concatenation of `pieces`. */
interface TensorSlot {
  spec: TensorSpec;
  byteLength: number;
  pieces: ByteRange[];
  /** Written intervals [start, end) in tensor bytes, sorted and merged. */
  written: Array<[number, number]>;
}

interface FileLayout {
  size: number;
  slots: Map<string, TensorSlot>;
  /** Fixed bytes known up front (record headers, the safetensors header, string records). */
  fixed: Array<{ offset: number; bytes: Uint8Array }>;
  /** Recomputes the safetensors header with the final crc_num, same length (space padded). */
  headerWithCrc?: (crc: number) => Uint8Array;
}

/**
 * A `.ckpt` or safetensors file whose whole layout is fixed by the tensor specs, so pieces of any
 * tensor can be written at any time in any order with memory bounded by the pieces in flight.
 */
export async function createTensorFileWriter(path: string, format: CheckpointFormat, specs: TensorSpec[], opts: TensorFileWriterOptions = {}): Promise<TensorFileWriter> {
  const layout = format === 'safetensors' ? safetensorsLayout(path, specs, opts) : ckptLayout(path, specs, opts);
  const tmp = join(dirname(path), `.${basename(path)}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  let handle: FileHandle | undefined;
  try {
    handle = await open(tmp, 'wx+');
    await handle.truncate(layout.size);
    for (const f of layout.fixed) await writeFully(handle, f.bytes, f.offset);
  } catch (e) {
    await handle?.close().catch(() => {});
    await unlink(tmp).catch(() => {});
    if (e instanceof ShardserveError) throw e;
    throw new ShardserveError('WriteFailed', `${path}: cannot write (${(e as Error).message})`, { file: path, cause: e });
  }
  let state: 'open' | 'committed' | 'aborted' = 'open';
  const h = handle;
  const ensureOpen = () => {
    if (state !== 'open') throw new ShardserveError('WriterClosed', `${path}: writer is already ${state}`, { file: path });
  };

  return {
    path,
    size: layout.size,
    async writeAt(name, byteOffsetInTensor, bytes) {
      ensureOpen();
      const slot = layout.slots.get(name);
      if (!slot) throw new ShardserveError('UnknownTensor', `${path}: tensor '${name}' is not among the file's specs`, { file: path, param: name });
      const end = byteOffsetInTensor + bytes.length;
      if (!(Number.isSafeInteger(byteOffsetInTensor) && byteOffsetInTensor >= 0 && end <= slot.byteLength)) {
        throw new ShardserveError('OutOfRange', `${path}: tensor '${name}': write of ${bytes.length} bytes at ${byteOffsetInTensor} is outside its ${slot.byteLength} bytes`, { file: path, param: name });
      }
      let pieceStart = 0;
      for (const piece of slot.pieces) {
        const lo = Math.max(byteOffsetInTensor, pieceStart);
        const hi = Math.min(end, pieceStart + piece.length);
        if (lo < hi) await writeFully(h, bytes.subarray(lo - byteOffsetInTensor, hi - byteOffsetInTensor), piece.offset + (lo - pieceStart));
        pieceStart += piece.length;
      }
      addInterval(slot.written, byteOffsetInTensor, end);
    },
    async commit() {
      ensureOpen();
      try {
        for (const slot of layout.slots.values()) {
          const done = slot.written.reduce((s, [a, b]) => s + (b - a), 0);
          if (done !== slot.byteLength) {
            throw new ShardserveError('IncompleteTensor', `${path}: tensor '${slot.spec.name}' has ${done} of ${slot.byteLength} bytes written`, { file: path, param: slot.spec.name });
          }
        }
        if (opts.crc && format === 'mindspore-ckpt') {
          // CRC over the serialized chunks in file order = everything before the trailer.
          const dataEnd = layout.size - 17;
          await writeFully(h, encodeCrcTrailer(await crcOfFile(h, 0, dataEnd)), dataEnd);
        } else if (opts.crc && layout.headerWithCrc) {
          let c = 0;
          for (const name of [...layout.slots.keys()].sort(compareCodeUnits)) {
            const slot = layout.slots.get(name)!;
            c = crc32(new TextEncoder().encode(name), c);
            // MindSpore's rule for integer scalars (see safetensorsCrc): `value` zero bytes.
            const count = slot.spec.shape.length === 0 ? scalarAsCount(slot.spec.dtype, await readAt(h, slot.pieces[0].offset, slot.byteLength)) : undefined;
            if (count !== undefined) {
              if (count < 0n) throw new ShardserveError('Unsupported', `${path}: tensor '${name}': MindSpore's crc_num cannot cover a negative integer scalar (${count})`, { file: path, param: name });
              c = crc32OfZeros(c, count);
              continue;
            }
            for (const p of slot.pieces) c = await crcOfFile(h, p.offset, p.length, c);
          }
          await writeFully(h, layout.headerWithCrc(c), 0);
        }
        await h.sync();
        await h.close();
        await rename(tmp, path);
        await syncDir(dirname(path));
        state = 'committed';
      } catch (e) {
        state = 'aborted';
        await h.close().catch(() => {});
        await unlink(tmp).catch(() => {});
        if (e instanceof ShardserveError) throw e;
        throw new ShardserveError('WriteFailed', `${path}: cannot write (${(e as Error).message})`, { file: path, cause: e });
      }
    },
    async abort() {
      if (state !== 'open') return;
      state = 'aborted';
      await h.close().catch(() => {});
      await unlink(tmp).catch(() => {});
    },
  };
}

function checkSpecs(path: string, specs: TensorSpec[]): Map<string, number> {
  const sizes = new Map<string, number>();
  for (const s of specs) {
    const bad = (what: string) => new ShardserveError('BadSpec', `${path}: tensor '${s.name}': ${what}`, { file: path, param: s.name });
    if (typeof s.name !== 'string' || s.name.length === 0) throw bad('name is empty');
    if (sizes.has(s.name)) throw bad('appears twice');
    if (!(s.dtype in DTYPE_BYTES)) throw bad(`unknown dtype '${s.dtype}'`);
    let n = DTYPE_BYTES[s.dtype];
    for (const d of s.shape) {
      if (!(Number.isSafeInteger(d) && d >= 0)) throw bad(`shape [${s.shape}] is not a list of non-negative integers`);
      n *= d;
    }
    if (!Number.isSafeInteger(n)) throw bad(`shape [${s.shape}] is too large`);
    sizes.set(s.name, n);
  }
  return sizes;
}

/** One `Checkpoint.value` record header (everything before tensor_content). */
function ckptRecordHeader(tag: string, type: string, dims: number[], contentLength: number): Uint8Array {
  const tensorPrefix = new WireWriter();
  for (const d of dims) tensorPrefix.key(1, WIRE_VARINT).varint(d);
  tensorPrefix.string(2, type).key(3, WIRE_LEN).varint(contentLength);
  const tp = tensorPrefix.finish();
  const tensorLength = tp.length + contentLength;
  const vp = new WireWriter().string(1, tag).key(2, WIRE_LEN).varint(tensorLength).finish();
  const rp = new WireWriter().key(1, WIRE_LEN).varint(vp.length + tensorLength).finish();
  return Buffer.concat([rp, vp, tp]);
}

function ckptLayout(path: string, specs: TensorSpec[], opts: TensorFileWriterOptions): FileLayout {
  if (opts.metadata && Object.keys(opts.metadata).length) {
    throw new ShardserveError('Unsupported', `${path}: a .ckpt file has no metadata; use safetensors or drop the metadata`, { file: path });
  }
  const sizes = checkSpecs(path, specs);
  const chunk = opts.ckptChunkBytes ?? MINDSPORE_CHUNK_BYTES;
  const slots = new Map<string, TensorSlot>();
  const fixed: FileLayout['fixed'] = [];
  let at = 0;
  for (const s of specs) {
    const byteLength = sizes.get(s.name)!;
    const pieces: ByteRange[] = [];
    // A zero-byte tensor still gets one (empty) record, so it survives a round trip.
    for (let off = 0; off < byteLength || (off === 0 && byteLength === 0); off += chunk) {
      const n = Math.min(chunk, byteLength - off);
      const header = ckptRecordHeader(s.name, DTYPE_TO_CKPT[s.dtype], s.shape, n);
      fixed.push({ offset: at, bytes: header });
      pieces.push({ offset: at + header.length, length: n });
      at += header.length + n;
      if (byteLength === 0) break;
    }
    slots.set(s.name, { spec: s, byteLength, pieces, written: byteLength === 0 ? [] : [] });
  }
  for (const { name, value } of opts.strings ?? []) {
    if (slots.has(name)) throw new ShardserveError('BadSpec', `${path}: string '${name}' has the name of a tensor`, { file: path, param: name });
    const content = utf32le(value);
    const header = ckptRecordHeader(name, 'str', [0], content.length);
    fixed.push({ offset: at, bytes: Buffer.concat([header, content]) });
    at += header.length + content.length;
  }
  return { size: at + (opts.crc ? 17 : 0), slots, fixed };
}

function safetensorsLayout(path: string, specs: TensorSpec[], opts: TensorFileWriterOptions): FileLayout {
  if (opts.strings?.length) throw new ShardserveError('Unsupported', `${path}: safetensors cannot hold str values (${opts.strings[0].name}); use .ckpt`, { file: path });
  const sizes = checkSpecs(path, specs);
  const names = specs.map((s) => s.name).sort(compareCodeUnits);
  const bySpec = new Map(specs.map((s) => [s.name, s]));
  const entries: Record<string, unknown> = {};
  const bufferOffsets = new Map<string, number>();
  let at = 0;
  for (const n of names) {
    const s = bySpec.get(n)!;
    entries[n] = { dtype: s.dtype, shape: s.shape, data_offsets: [at, at + sizes.get(n)!] };
    bufferOffsets.set(n, at);
    at += sizes.get(n)!;
  }
  const meta = (crc?: string) => {
    const m: Record<string, string> = { ...(opts.metadata ?? {}) };
    if (crc !== undefined) m.crc_num = crc;
    return Object.keys(m).length ? m : undefined;
  };
  // Built by hand so the key order is exactly metadata then sorted names (a JS object would move
  // integer-like names first, and MindSpore checks offsets are contiguous in header order).
  const headerJson = (crc?: string) => {
    const m = meta(crc);
    const items = [...(m ? [`"__metadata__":${JSON.stringify(m)}`] : []), ...names.map((n) => `${JSON.stringify(n)}:${JSON.stringify(entries[n])}`)];
    return Buffer.from(`{${items.join(',')}}`);
  };
  // Pad with spaces (allowed by the format) so the buffer starts 8-byte aligned; with a CRC the
  // header is sized for the longest crc_num so the final value fits in the same space.
  const raw = headerJson(opts.crc ? CRC_PLACEHOLDER : undefined);
  const headerLength = Math.ceil((8 + raw.length) / 8) * 8 - 8;
  const header = (json: Buffer) => {
    const out = Buffer.alloc(8 + headerLength, 0x20);
    out.writeBigUInt64LE(BigInt(headerLength), 0);
    json.copy(out, 8);
    return out;
  };
  const bufferStart = 8 + headerLength;
  const slots = new Map<string, TensorSlot>();
  for (const n of names) slots.set(n, { spec: bySpec.get(n)!, byteLength: sizes.get(n)!, pieces: [{ offset: bufferStart + bufferOffsets.get(n)!, length: sizes.get(n)! }], written: [] });
  return {
    size: bufferStart + at,
    slots,
    fixed: [{ offset: 0, bytes: header(raw) }],
    headerWithCrc: opts.crc ? (c) => header(headerJson(String(c >>> 0))) : undefined,
  };
}

function addInterval(list: Array<[number, number]>, a: number, b: number): void {
  if (a === b) return;
  list.push([a, b]);
  list.sort((x, y) => x[0] - y[0]);
  const merged: Array<[number, number]> = [];
  for (const iv of list) {
    const last = merged[merged.length - 1];
    if (last && iv[0] <= last[1]) last[1] = Math.max(last[1], iv[1]);
    else merged.push([iv[0], iv[1]]);
  }
  list.splice(0, list.length, ...merged);
}

async function writeFully(h: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  for (let done = 0; done < bytes.length; ) {
    const { bytesWritten } = await h.write(bytes, done, bytes.length - done, position + done);
    done += bytesWritten;
  }
}

async function readAt(h: FileHandle, offset: number, length: number): Promise<Uint8Array> {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await h.read(buf, done, length - done, offset + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return buf;
}

async function crcOfFile(h: FileHandle, offset: number, length: number, initial = 0): Promise<number> {
  const buf = Buffer.allocUnsafe(Math.min(STREAM_CHUNK, Math.max(length, 1)));
  let c = initial;
  for (let done = 0; done < length; ) {
    const n = Math.min(buf.length, length - done);
    const { bytesRead } = await h.read(buf, 0, n, offset + done);
    if (bytesRead === 0) throw new Error(`temp file ended at ${offset + done}`);
    c = crc32(buf.subarray(0, bytesRead), c);
    done += bytesRead;
  }
  return c;
}

async function syncDir(dir: string): Promise<void> {
  try {
    const d = await open(dir, 'r');
    try {
      await d.sync();
    } finally {
      await d.close();
    }
  } catch {
    // Not every platform can fsync a directory; the rename itself is still atomic.
  }
}
