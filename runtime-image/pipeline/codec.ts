/**
 * Hand-written protobuf codec for the hot rank-to-rank messages (StageMessage, StageReply of
 * proto/rank.proto): the same wire format the .proto defines, but tensor bytes are read as views and
 * written with at most one copy (none for large tensors when framing for the stream: see Writer),
 * with no object conversion pass. Everything else in rank.proto goes through proto-loader as usual.
 * Also the front door's hottest message, the OIP ModelInferResponse (frameInferResponse).
 */

// Wire types.
const VARINT = 0;
const LEN = 2;

function varintSize(n: number): number {
  let size = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

/** Tensor bytes at least this long are not copied into the encoded message (see Writer). */
export const ZERO_COPY_MIN = 16 * 1024;

/** The one rule for which tensor bytes a writer leaves uncopied (its buffer is sized by it too). */
const leftUncopied = (b: Uint8Array, zeroCopyMin: number) => b.byteLength >= zeroCopyMin;

/**
 * Writes a message into one buffer, except that, when `zeroCopyMin` is finite, `bytes` fields of at
 * least that many bytes are not copied: the message then comes out as pieces (the buffer's stretches
 * between such fields, and the fields' own bytes) to be written to the stream one after the other.
 */
class Writer {
  pos: number;
  private segStart: number;
  private readonly pieces: Uint8Array[] = [];
  constructor(readonly buf: Buffer, start = 0, private readonly zeroCopyMin = Infinity) {
    this.pos = start;
    this.segStart = 0;
  }
  varint(n: number): void {
    while (n >= 128) {
      this.buf[this.pos++] = (n % 128) | 128;
      n = Math.floor(n / 128);
    }
    this.buf[this.pos++] = n;
  }
  tag(field: number, wire: number): void {
    this.varint(field * 8 + wire);
  }
  /** `tensorData`: may be left uncopied (only tensor bytes are: see uncopied). */
  bytes(field: number, b: Uint8Array, tensorData = false): void {
    this.tag(field, LEN);
    this.varint(b.byteLength);
    if (tensorData && leftUncopied(b, this.zeroCopyMin)) {
      if (this.pos > this.segStart) this.pieces.push(this.buf.subarray(this.segStart, this.pos));
      this.pieces.push(b);
      this.segStart = this.pos;
      return;
    }
    this.buf.set(b, this.pos);
    this.pos += b.byteLength;
  }
  string(field: number, s: string): void {
    if (s) this.utf8(field, s);
  }
  zeros(n: number): void {
    this.buf.fill(0, this.pos, this.pos + n);
    this.pos += n;
  }
  /** A string field written even when empty; its UTF-8 bytes go straight into the buffer. */
  utf8(field: number, s: string): void {
    const n = Buffer.byteLength(s, 'utf8');
    this.tag(field, LEN);
    this.varint(n);
    this.pos += this.buf.write(s, this.pos, n, 'utf8');
  }
  /** The whole buffer, or the pieces in order when some bytes were not copied. */
  finish(): Buffer | Uint8Array[] {
    if (this.pieces.length === 0) return this.buf;
    if (this.pos > this.segStart) this.pieces.push(this.buf.subarray(this.segStart, this.pos));
    return this.pieces;
  }
}

export interface WireTensor {
  name: string;
  datatype: string;
  shape: Array<number | string>;
  data: Uint8Array;
}

const strLen = (field: number, s: string) => {
  if (!s) return 0;
  const n = Buffer.byteLength(s, 'utf8');
  return varintSize(field * 8) + varintSize(n) + n;
};
const lenField = (field: number, n: number) => varintSize(field * 8) + varintSize(n) + n;

function shapeBody(shape: Array<number | string>): number {
  let n = 0;
  for (const d of shape) n += varintSize(Number(d));
  return n;
}

/** `pad`: bytes of the Tensor's pad field (0 = none; see requestPads). */
function tensorSize(t: WireTensor, pad = 0): number {
  const shape = shapeBody(t.shape);
  return strLen(1, t.name) + strLen(2, t.datatype) + (t.shape.length ? lenField(3, shape) : 0) + pad + (t.data.byteLength ? lenField(4, t.data.byteLength) : 0);
}

function writeTensor(w: Writer, field: number, t: WireTensor, pad = 0): void {
  w.tag(field, LEN);
  w.varint(tensorSize(t, pad));
  w.string(1, t.name);
  w.string(2, t.datatype);
  if (t.shape.length) {
    w.tag(3, LEN);
    w.varint(shapeBody(t.shape));
    for (const d of t.shape) w.varint(Number(d));
  }
  if (pad) {
    w.tag(PAD_FIELD, LEN);
    w.varint(pad - 2);
    w.zeros(pad - 2);
  }
  if (t.data.byteLength) w.bytes(4, t.data, true);
}

/** Tensor.pad of rank.proto: zero bytes a reader ignores. */
const PAD_FIELD = 15;
/** Request tensors of at least this many bytes start 8-byte aligned within the message (requestPads). */
export const ALIGN_MIN = ZERO_COPY_MIN;

/** Bytes of a pad field that moves what follows it by `shift` (mod 8): none, or 2 to 9 (tag, length, zeros). */
function padBytes(shift: number): number {
  return shift === 0 ? 0 : shift === 1 ? 9 : shift;
}

export interface StageMessageObject {
  id: string;
  request?: { tensors: WireTensor[]; budget_us: string; outputs: string[] } | null;
  cancel?: boolean;
}

export interface StageReplyObject {
  id: string;
  outputs: WireTensor[];
  error?: { kind: string; message: string } | null;
  timings: Array<{ stage: number; compute_us: string }>;
}

/** Bytes of `data` (tensor bytes) that a writer with `zeroCopyMin` leaves uncopied. */
function uncopied(data: readonly Uint8Array[], zeroCopyMin: number): number {
  let n = 0;
  for (const b of data) if (leftUncopied(b, zeroCopyMin)) n += b.byteLength;
  return n;
}

/**
 * A writer for a message of `size` bytes, after a gRPC message prefix (5 bytes: uncompressed flag,
 * big-endian length) when `framed`, so the message goes onto a gRPC stream as it is. With
 * `zeroCopyMin`, large tensor bytes are referenced rather than copied (see Writer).
 */
function writerFor(size: number, framed: boolean, data: readonly Uint8Array[], zeroCopyMin = Infinity): Writer {
  const own = size - uncopied(data, zeroCopyMin);
  if (!framed) return new Writer(Buffer.allocUnsafe(own), 0, zeroCopyMin);
  const buf = Buffer.allocUnsafe(5 + own);
  buf[0] = 0;
  buf.writeUInt32BE(size, 1);
  return new Writer(buf, 5, zeroCopyMin);
}

/** A StageMessage as one buffer (no gRPC prefix). */
export function encodeStageMessage(m: StageMessageObject): Buffer {
  return writeStageMessage(m, false) as Buffer;
}

/**
 * A StageMessage with its gRPC prefix, ready for the stream: one buffer, or pieces in order when it
 * carries tensors of ZERO_COPY_MIN bytes or more (their bytes are referenced, not copied, so they
 * must not change until written; tensors never change once made).
 */
export function frameStageMessage(m: StageMessageObject): Buffer | Uint8Array[] {
  return writeStageMessage(m, true, ZERO_COPY_MIN);
}

/** A StageReply as one buffer (no gRPC prefix). */
export function encodeStageReply(r: StageReplyObject): Buffer {
  return writeStageReply(r, false) as Buffer;
}

/** A StageReply with its gRPC prefix, as frameStageMessage. */
export function frameStageReply(r: StageReplyObject): Buffer | Uint8Array[] {
  return writeStageReply(r, true, ZERO_COPY_MIN);
}

/**
 * The pad field of each tensor of a StageMessage's request, so that the data of every tensor of
 * ALIGN_MIN bytes or more starts at a multiple of 8 bytes from the message's start. The receiving
 * stage gets a large message 8-byte aligned (its DATA frame joined 3 bytes into a buffer of its own,
 * h2/server.ts DATA_LEAD; or, over several frames, joined by MessageReader at the start of one), so
 * its tensors are then aligned views that onnxruntime takes as they are; unaligned, each would be
 * copied first (a Float32Array cannot start at an odd offset). A pad changes the length fields before it, so the
 * layout is recomputed until it holds (two passes unless a length crosses a varint boundary).
 * `tail`: bytes of the request's fields after its tensors (budget, requested outputs).
 */
function requestPads(id: number, tensors: readonly WireTensor[], tail: number): number[] {
  const pads = tensors.map(() => 0);
  if (!tensors.some((t) => t.data.byteLength >= ALIGN_MIN)) return pads;
  for (let pass = 0; pass < 4; pass++) {
    let reqSize = tail;
    for (let i = 0; i < tensors.length; i++) reqSize += lenField(1, tensorSize(tensors[i], pads[i]));
    let pos = (id ? 1 + varintSize(id) : 0) + 1 + varintSize(reqSize);
    let changed = false;
    for (let i = 0; i < tensors.length; i++) {
      const t = tensors[i];
      const own = tensorSize(t, pads[i]);
      pos += 1 + varintSize(own) + own - t.data.byteLength; // where the data starts
      if (t.data.byteLength >= ALIGN_MIN) {
        const pad = padBytes((((pads[i] - pos) % 8) + 8) % 8);
        if (pad !== pads[i]) {
          pos += pad - pads[i];
          pads[i] = pad;
          changed = true;
        }
      }
      pos += t.data.byteLength;
    }
    if (!changed) break;
  }
  return pads;
}

function writeStageMessage(m: StageMessageObject, framed: boolean, zeroCopyMin = Infinity): Buffer | Uint8Array[] {
  const id = Number(m.id);
  let size = id ? varintSize(8) + varintSize(id) : 0;
  let reqSize = 0;
  let pads: number[] = [];
  if (m.request) {
    const budget = Number(m.request.budget_us);
    if (budget) reqSize += 1 + varintSize(budget);
    for (const o of m.request.outputs) reqSize += utf8Len(3, o);
    pads = requestPads(id, m.request.tensors, reqSize);
    m.request.tensors.forEach((t, i) => (reqSize += lenField(1, tensorSize(t, pads[i]))));
    size += lenField(2, reqSize);
  }
  if (m.cancel) size += 2;
  const w = writerFor(size, framed, m.request?.tensors.map((t) => t.data) ?? [], zeroCopyMin);
  if (id) {
    w.tag(1, VARINT);
    w.varint(id);
  }
  if (m.request) {
    w.tag(2, LEN);
    w.varint(reqSize);
    m.request.tensors.forEach((t, i) => writeTensor(w, 1, t, pads[i]));
    const budget = Number(m.request.budget_us);
    if (budget) {
      w.tag(2, VARINT);
      w.varint(budget);
    }
    for (const o of m.request.outputs) w.utf8(3, o);
  }
  if (m.cancel) {
    w.tag(3, VARINT);
    w.varint(1);
  }
  return w.finish();
}

function writeStageReply(r: StageReplyObject, framed: boolean, zeroCopyMin = Infinity): Buffer | Uint8Array[] {
  const id = Number(r.id);
  let size = id ? 1 + varintSize(id) : 0;
  for (const t of r.outputs) size += lenField(2, tensorSize(t));
  const errSize = r.error ? strLen(1, r.error.kind) + strLen(2, r.error.message) : 0;
  if (r.error) size += lenField(3, errSize);
  const timingSizes = r.timings.map((t) => (t.stage ? 1 + varintSize(t.stage) : 0) + (Number(t.compute_us) ? 1 + varintSize(Number(t.compute_us)) : 0));
  for (const n of timingSizes) size += lenField(4, n);
  const w = writerFor(size, framed, r.outputs.map((t) => t.data), zeroCopyMin);
  if (id) {
    w.tag(1, VARINT);
    w.varint(id);
  }
  for (const t of r.outputs) writeTensor(w, 2, t);
  if (r.error) {
    w.tag(3, LEN);
    w.varint(errSize);
    w.string(1, r.error.kind);
    w.string(2, r.error.message);
  }
  r.timings.forEach((t, i) => {
    w.tag(4, LEN);
    w.varint(timingSizes[i]);
    if (t.stage) {
      w.tag(1, VARINT);
      w.varint(t.stage);
    }
    if (Number(t.compute_us)) {
      w.tag(2, VARINT);
      w.varint(Number(t.compute_us));
    }
  });
  return w.finish();
}

/**
 * The OIP's ModelInferResponse (inference.ModelInferResponse of proto/grpc_predict_v2.proto) as the
 * front door sends it: names, shapes and raw_output_contents, nothing else (no parameters, no typed
 * contents). The same bytes as protobufjs writes for the object, but framed for the stream and with
 * outputs of ZERO_COPY_MIN bytes or more referenced instead of copied (protobufjs copies every one).
 */
export interface InferResponseObject {
  model_name: string;
  model_version: string;
  id: string;
  outputs: Array<{ name: string; datatype: string; shape: number[] }>;
  raw_output_contents: Uint8Array[];
}

/** Bytes of a string field written even when empty. */
function utf8Len(field: number, s: string): number {
  return lenField(field, Buffer.byteLength(s, 'utf8'));
}

export function frameInferResponse(r: InferResponseObject): Buffer | Uint8Array[] {
  // Every string field is written, empty or not, as protobufjs does for a field the object has.
  const metaSizes = r.outputs.map((t) => utf8Len(1, t.name) + utf8Len(2, t.datatype) + (t.shape.length ? lenField(3, shapeBody(t.shape)) : 0));
  let size = utf8Len(1, r.model_name) + utf8Len(2, r.model_version) + utf8Len(3, r.id);
  for (const n of metaSizes) size += lenField(5, n);
  for (const b of r.raw_output_contents) size += lenField(6, b.byteLength);
  const w = writerFor(size, true, r.raw_output_contents, ZERO_COPY_MIN);
  w.utf8(1, r.model_name);
  w.utf8(2, r.model_version);
  w.utf8(3, r.id);
  r.outputs.forEach((t, i) => {
    w.tag(5, LEN);
    w.varint(metaSizes[i]);
    w.utf8(1, t.name);
    w.utf8(2, t.datatype);
    if (t.shape.length) {
      w.tag(3, LEN);
      w.varint(shapeBody(t.shape));
      for (const d of t.shape) w.varint(d);
    }
  });
  for (const b of r.raw_output_contents) w.bytes(6, b, true);
  return w.finish();
}

class Reader {
  pos: number;
  constructor(readonly buf: Buffer, start = 0, readonly end = buf.length) {
    this.pos = start;
  }
  get done(): boolean {
    return this.pos >= this.end;
  }
  varint(): number {
    let n = 0;
    let mul = 1;
    for (;;) {
      if (this.pos >= this.end) throw new Error('truncated varint in rank message');
      const b = this.buf[this.pos++];
      n += (b & 127) * mul;
      if (b < 128) return n;
      mul *= 128;
    }
  }
  sub(): Reader {
    const len = this.varint();
    if (this.pos + len > this.end) throw new Error('truncated field in rank message');
    const r = new Reader(this.buf, this.pos, this.pos + len);
    this.pos += len;
    return r;
  }
  bytes(): Buffer {
    const r = this.sub();
    return this.buf.subarray(r.pos, r.end);
  }
  string(): string {
    return this.bytes().toString('utf8');
  }
  skip(wire: number): void {
    if (wire === VARINT) this.varint();
    else if (wire === LEN) this.sub();
    else if (wire === 1) this.pos += 8;
    else if (wire === 5) this.pos += 4;
    else throw new Error(`unsupported wire type ${wire} in rank message`);
  }
}

function readTensor(r: Reader): WireTensor {
  const t: WireTensor = { name: '', datatype: '', shape: [], data: Buffer.alloc(0) };
  while (!r.done) {
    const key = r.varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 1) t.name = r.string();
    else if (field === 2) t.datatype = r.string();
    else if (field === 3 && wire === LEN) {
      const p = r.sub();
      while (!p.done) t.shape.push(p.varint());
    } else if (field === 3) t.shape.push(r.varint());
    else if (field === 4) t.data = r.bytes();
    else r.skip(wire);
  }
  return t;
}

export function decodeStageMessage(buf: Buffer): StageMessageObject {
  const r = new Reader(buf);
  const m: StageMessageObject = { id: '0', request: null, cancel: false };
  while (!r.done) {
    const key = r.varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 1) m.id = String(r.varint());
    else if (field === 2) {
      const q = r.sub();
      const req = { tensors: [] as WireTensor[], budget_us: '0', outputs: [] as string[] };
      while (!q.done) {
        const k = q.varint();
        const f = Math.floor(k / 8);
        if (f === 1) req.tensors.push(readTensor(q.sub()));
        else if (f === 2) req.budget_us = String(q.varint());
        else if (f === 3) req.outputs.push(q.string());
        else q.skip(k % 8);
      }
      m.request = req;
    } else if (field === 3) m.cancel = r.varint() !== 0;
    else r.skip(wire);
  }
  return m;
}

export function decodeStageReply(buf: Buffer): StageReplyObject {
  const r = new Reader(buf);
  const m: StageReplyObject = { id: '0', outputs: [], error: null, timings: [] };
  while (!r.done) {
    const key = r.varint();
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 1) m.id = String(r.varint());
    else if (field === 2) m.outputs.push(readTensor(r.sub()));
    else if (field === 3) {
      const e = r.sub();
      const err = { kind: '', message: '' };
      while (!e.done) {
        const k = e.varint();
        if (Math.floor(k / 8) === 1) err.kind = e.string();
        else if (Math.floor(k / 8) === 2) err.message = e.string();
        else e.skip(k % 8);
      }
      m.error = err;
    } else if (field === 4) {
      const t = r.sub();
      const timing = { stage: 0, compute_us: '0' };
      while (!t.done) {
        const k = t.varint();
        if (Math.floor(k / 8) === 1) timing.stage = t.varint();
        else if (Math.floor(k / 8) === 2) timing.compute_us = String(t.varint());
        else t.skip(k % 8);
      }
      m.timings.push(timing);
    } else r.skip(wire);
  }
  return m;
}
