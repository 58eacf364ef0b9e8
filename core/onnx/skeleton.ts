/**
 * An ONNX model read without the bytes of its large weights. A model exported by MindSpore carries
 * every weight of the network, but a rank replaces the weights of its own stage with its checkpoint
 * slice and drops the other stages': reading the whole file costs every rank a model's worth of bytes
 * (and of memory while it loads). Here the raw_data of every large initializer (see SkeletonTuning) is
 * skipped, its place recorded, except int32/int64 ones (shape arguments, which planning reads);
 * everything else is read and parsed as usual, and `fill` reads the skipped bytes of the
 * initializers that turn out to be needed.
 */
import type { ByteRange } from '../checkpoint/types.js';
import { WIRE_FIXED32 as I32, WIRE_FIXED64 as I64, WIRE_LEN as LEN, WIRE_VARINT as VARINT, WireWriter } from '../ckpt/wire.js';
import { ShardserveError } from '../errors.js';
import type { ByteSource } from '../storage/source.js';
import { type OnnxModel, OnnxDataType, parseOnnx } from './model.js';

/**
 * What is skipped and how the file is read. raw_data of at least `lazyBytes` is skipped (integer
 * tensors, shape arguments, never are); a window of `minWindow` is read after a skip (the next
 * initializer's header), doubling up to `maxWindow` while reads run on.
 */
export interface SkeletonTuning {
  lazyBytes: number;
  minWindow: number;
  maxWindow: number;
}
/** A local file (it reads synchronously): reads are cheap, small windows, skip from 64 KiB. */
export const LOCAL_TUNING: SkeletonTuning = { lazyBytes: 64 * 1024, minWindow: 4 * 1024, maxWindow: 1024 * 1024 };
/**
 * A remote object: every window is a request, so windows are large and only what costs more to
 * transfer than a request (4 MiB, tens of ms) is skipped: a model of many mid-sized weights is read
 * in a few large requests, not one small request per weight.
 */
export const REMOTE_TUNING: SkeletonTuning = { lazyBytes: 4 * 1024 * 1024, minWindow: 1024 * 1024, maxWindow: 16 * 1024 * 1024 };

const MODEL_GRAPH = 7;
const GRAPH_INITIALIZER = 5;
const TENSOR_DATA_TYPE = 2;
const TENSOR_RAW_DATA = 9;
const KEEP_TYPES = new Set<number>([OnnxDataType.INT32, OnnxDataType.INT64]);

export interface OnnxSkeleton {
  model: OnnxModel;
  /** Where the skipped raw_data of each initializer lies in the file, by initializer name. */
  skipped: Map<string, ByteRange>;
  /** Reads the skipped bytes of these initializers back into their rawData. */
  fill(names: Iterable<string>): Promise<void>;
}

class Malformed extends Error {}

/** Reads a ByteSource front to back through windows, able to jump ahead without reading. */
class Cursor {
  private buf: Uint8Array = new Uint8Array(0);
  private base = 0;
  private window: number;
  pos = 0;

  constructor(private readonly source: ByteSource, private readonly tuning: SkeletonTuning) {
    this.window = tuning.minWindow;
  }

  private async need(n: number): Promise<void> {
    if (this.pos >= this.base && this.pos + n <= this.base + this.buf.length) return;
    if (this.pos + n > this.source.size) throw new Malformed(`a field at offset ${this.pos} runs past the end of the file`);
    const len = Math.min(Math.max(n, this.window), this.source.size - this.pos);
    this.buf = await this.source.read(this.pos, len);
    this.base = this.pos;
    this.window = Math.min(this.window * 2, this.tuning.maxWindow);
  }

  async bytes(n: number): Promise<Uint8Array> {
    await this.need(n);
    const at = this.pos - this.base;
    this.pos += n;
    return this.buf.subarray(at, at + n);
  }

  async varint(): Promise<number> {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.base + this.buf.length) await this.need(1);
      const b = this.buf[this.pos - this.base];
      this.pos++;
      value += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(value)) throw new Malformed(`a varint at offset ${this.pos - i - 1} is too large`);
        return value;
      }
      scale *= 128;
    }
    throw new Malformed(`a varint at offset ${this.pos - 10} is longer than 10 bytes`);
  }

  /** Moves past a varint whatever its value (an int64 field may hold a negative number: 10 bytes). */
  async skipVarint(): Promise<void> {
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.base + this.buf.length) await this.need(1);
      const b = this.buf[this.pos - this.base];
      this.pos++;
      if ((b & 0x80) === 0) return;
    }
    throw new Malformed(`a varint at offset ${this.pos - 10} is longer than 10 bytes`);
  }

  /** Moves past `n` bytes without reading them; the next window is small again. */
  skip(n: number): void {
    this.pos += n;
    if (this.pos > this.source.size) throw new Malformed(`a field ending at offset ${this.pos} runs past the end of the file`);
    this.window = this.tuning.minWindow;
  }
}

/** A length-delimited field holding `parts`, as bytes. */
function lenField(field: number, parts: Uint8Array[]): Uint8Array[] {
  const length = parts.reduce((a, p) => a + p.byteLength, 0);
  return [new WireWriter().key(field, LEN).varint(length).finish(), ...parts];
}

/**
 * Walks the fields of the message in [cursor.pos, end): `on` gets each field's number, wire type and
 * the offset of its value, and returns true when it consumed the value itself; otherwise the field's
 * whole encoding is copied to `out`.
 */
async function walk(cursor: Cursor, end: number, out: Uint8Array[], on: (field: number, wire: number, keyAt: number) => Promise<boolean>): Promise<void> {
  while (cursor.pos < end) {
    const keyAt = cursor.pos;
    const key = await cursor.varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 0) throw new Malformed(`field number 0 at offset ${keyAt}`);
    if (await on(field, wire, keyAt)) continue;
    let length: number;
    if (wire === VARINT) {
      await cursor.skipVarint();
      length = cursor.pos - keyAt;
      cursor.pos = keyAt;
    } else if (wire === I64 || wire === I32) {
      length = cursor.pos - keyAt + (wire === I64 ? 8 : 4);
      cursor.pos = keyAt;
    } else if (wire === LEN) {
      const n = await cursor.varint();
      length = cursor.pos - keyAt + n;
      cursor.pos = keyAt;
    } else {
      throw new Malformed(`unsupported wire type ${wire} for field ${field} at offset ${keyAt}`);
    }
    if (keyAt + length > end) throw new Malformed(`field ${field} at offset ${keyAt} runs past the end of its message`);
    out.push(Uint8Array.from(await cursor.bytes(length)));
  }
  if (cursor.pos !== end) throw new Malformed(`a field runs past the end of its message at offset ${end}`);
}

/** The model in `source` with the raw_data of its large initializers (other than int32/int64) left unread. */
export async function readOnnxSkeleton(source: ByteSource, uri = source.uri, tuning: SkeletonTuning = source.readSync ? LOCAL_TUNING : REMOTE_TUNING): Promise<OnnxSkeleton> {
  const cursor = new Cursor(source, tuning);
  // Per initializer, in file order: its skipped raw_data, if any.
  const skippedByIndex: (ByteRange | undefined)[] = [];
  const modelFields: Uint8Array[] = [];
  const graphFields: Uint8Array[] = [];
  let sawGraph = false;
  try {
    await walk(cursor, source.size, modelFields, async (field, wire, keyAt) => {
      if (field !== MODEL_GRAPH || wire !== LEN) return false;
      const length = await cursor.varint();
      const end = cursor.pos + length;
      if (end > source.size) throw new Malformed(`the graph at offset ${keyAt} runs past the end of the file`);
      sawGraph = true;
      await walk(cursor, end, graphFields, async (gField, gWire) => {
        if (gField !== GRAPH_INITIALIZER || gWire !== LEN) return false;
        const tLength = await cursor.varint();
        const tEnd = cursor.pos + tLength;
        if (tEnd > end) throw new Malformed(`an initializer at offset ${cursor.pos} runs past the end of the graph`);
        const tensorFields: Uint8Array[] = [];
        let dataType: number | undefined;
        let skipped: ByteRange | undefined;
        await walk(cursor, tEnd, tensorFields, async (tField, tWire) => {
          if (tField === TENSOR_DATA_TYPE && tWire === VARINT) {
            const at = cursor.pos;
            await cursor.skipVarint();
            const end = cursor.pos;
            cursor.pos = at;
            // A data type takes one byte; anything longer is left to the parser (and never skipped).
            dataType = end - at === 1 ? (await cursor.bytes(1))[0] : -1;
            cursor.pos = at;
            return false;
          }
          if (tField !== TENSOR_RAW_DATA || tWire !== LEN) return false;
          skipped = undefined; // a repeated raw_data: the last one counts
          if (dataType === undefined || dataType < 0 || KEEP_TYPES.has(dataType)) return false;
          const at = cursor.pos;
          const n = await cursor.varint();
          if (n < tuning.lazyBytes) {
            cursor.pos = at;
            return false;
          }
          if (cursor.pos + n > tEnd) throw new Malformed(`raw_data at offset ${cursor.pos} runs past the end of its initializer`);
          skipped = { offset: cursor.pos, length: n };
          cursor.skip(n);
          return true;
        });
        skippedByIndex.push(skipped);
        graphFields.push(...lenField(GRAPH_INITIALIZER, tensorFields));
        return true;
      });
      return true;
    });
  } catch (e) {
    if (e instanceof Malformed) throw new ShardserveError('OnnxParse', `${uri}: not an ONNX model (${e.message})`, { file: uri, cause: e });
    throw e;
  }
  if (!sawGraph) throw new ShardserveError('OnnxParse', `${uri}: ONNX model has no graph (field 7); expected a ModelProto`, { file: uri });
  const parts = [...modelFields, ...lenField(MODEL_GRAPH, graphFields)];
  const model = parseOnnx(Buffer.concat(parts), uri);
  const initializers = model.graph!.initializer ?? [];
  const skipped = new Map<string, ByteRange>();
  for (let i = 0; i < skippedByIndex.length; i++) {
    const range = skippedByIndex[i];
    if (!range) continue;
    // A data type given again after the bytes counts (the last one): an integer tensor is read now.
    if (KEEP_TYPES.has(initializers[i].dataType ?? -1)) initializers[i].rawData = await source.read(range.offset, range.length);
    else skipped.set(initializers[i].name ?? '', range);
  }
  return {
    model,
    skipped,
    async fill(names) {
      const wanted = new Set(names);
      for (const t of initializers) {
        const range = skipped.get(t.name ?? '');
        if (!range || !wanted.has(t.name ?? '')) continue;
        t.rawData = await source.read(range.offset, range.length);
        skipped.delete(t.name ?? '');
      }
    },
  };
}
