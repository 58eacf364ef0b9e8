// HTTP/2 (RFC 7540/9113, cleartext with prior knowledge) of our own, both ends: the server of the
// OIP front door and the rank port, and the client of the stage links. node:http2 makes every
// request a Duplex stream driven through nghttp2's callbacks, which cost the front door more than its
// whole target (about 0.14 ms of CPU per unary call on 2 cores, measured with the MLP model against
// this implementation), and its client cuts DATA frames at 16 KiB and stops reading its socket while
// it writes. Here a stream is a small EventEmitter fed straight from the socket, a reply (headers,
// message, trailers) leaves in one write, and a message goes out in frames as large as the peer
// takes. What request/response calls need is complete: SETTINGS, flow control both ways,
// CONTINUATION, padding, PING, RST_STREAM, GOAWAY (graceful close), HPACK with Huffman. Server push
// is not used (a client refuses it) and priority signals are read and ignored.
import { EventEmitter } from 'node:events';
import * as net from 'node:net';
import { ChunkQueue } from './chunks.js';
import { encodeHeaders, HpackDecoder, HpackError, type HeaderFields } from './hpack.js';

/** HTTP/2 error codes (RFC 9113 section 7). */
export const H2Error = { NO_ERROR: 0, PROTOCOL_ERROR: 1, INTERNAL_ERROR: 2, FLOW_CONTROL_ERROR: 3, STREAM_CLOSED: 5, FRAME_SIZE_ERROR: 6, REFUSED_STREAM: 7, CANCEL: 8, COMPRESSION_ERROR: 9, ENHANCE_YOUR_CALM: 11 } as const;

const DATA = 0;
/**
 * Where a DATA frame's payload starts in the buffer it is joined into when it came in several
 * socket reads (every large message does): a gRPC message starts 5 bytes into its frame's payload
 * (after its length prefix), so a lead of 3 puts it 8-byte aligned, and with it the tensors the
 * stage codec aligns within a message (codec.ts requestPads). onnxruntime then takes them as they
 * are; unaligned, each would be copied first (a Float32Array cannot start at an odd offset).
 */
const DATA_LEAD = 3;
const HEADERS = 1;
const PRIORITY = 2;
const RST_STREAM = 3;
const SETTINGS = 4;
const PUSH_PROMISE = 5;
const PING = 6;
const GOAWAY = 7;
const WINDOW_UPDATE = 8;
const CONTINUATION = 9;

const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY_FLAG = 0x20;

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');
const DEFAULT_WINDOW = 65_535;
const MAX_WINDOW = 2 ** 31 - 1;
/** Replies up to this size are joined into one buffer before the write; larger ones go out as a writev. */
const JOIN_BELOW = 64 * 1024;

export interface H2Settings {
  /** Our receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE). */
  initialWindowSize: number;
  /** Largest frame payload we accept (SETTINGS_MAX_FRAME_SIZE). */
  maxFrameSize: number;
  /** Our receive window for the whole connection (raised with a WINDOW_UPDATE at the start). */
  connectionWindowSize: number;
  maxConcurrentStreams: number;
  /** Largest decoded header list we accept (SETTINGS_MAX_HEADER_LIST_SIZE). */
  maxHeaderListSize: number;
}

export type OutgoingHeaders = Record<string, string | number>;

class ProtocolError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

/**
 * One stream. On the server: a request, with the part of node:http2's ServerHttp2Stream that a gRPC
 * server uses: events 'data' (Buffer), 'end', 'close', 'wantTrailers', 'drain'; respond, write,
 * end, sendTrailers, close. On a client (H2Connection.request): the same events, plus 'response'
 * (the first header block) and 'trailers' (the last), both with the decoded fields.
 */
export class H2Stream extends EventEmitter {
  headersSent = false;
  destroyed = false;
  writableEnded = false;
  /** The RST_STREAM code that closed the stream (NO_ERROR when it ended normally). */
  rstCode: number = H2Error.NO_ERROR;
  /** @internal */ remoteEnded = false;
  /** @internal */ sendWindow: number;
  /** @internal */ recvWindow: number;
  /** @internal */ recvConsumed = 0;
  /** @internal */ queue: Uint8Array[] = [];
  /** @internal */ queueOffset = 0;
  /** @internal */ waitForTrailers = false;
  /** @internal */ trailersAsked = false;
  /** @internal */ localEnded = false;
  /** @internal */ wantsDrain = false;
  /** @internal Client streams: the response's header block has come. */
  responseSeen = false;

  constructor(private readonly conn: H2Connection, readonly id: number, sendWindow: number, recvWindow: number) {
    super();
    this.sendWindow = sendWindow;
    this.recvWindow = recvWindow;
  }

  respond(headers: OutgoingHeaders, opts: { endStream?: boolean; waitForTrailers?: boolean } = {}): void {
    if (this.destroyed || this.headersSent) return;
    this.headersSent = true;
    this.waitForTrailers = opts.waitForTrailers === true;
    const end = opts.endStream === true;
    this.conn.sendHeaders(this, headers, end);
    if (end) {
      this.writableEnded = true;
      this.conn.localEnd(this);
    }
  }

  /** Queues bytes for the stream; false when they (or earlier ones) wait for the peer's window or the socket. */
  write(data: Uint8Array | string): boolean {
    return this.writeParts([typeof data === 'string' ? Buffer.from(data) : data]);
  }

  /**
   * Queues pieces that belong together (a message's prefix, fields and tensor bytes) as one write:
   * they leave in as few DATA frames as the windows allow, so the receiver gets the message whole.
   */
  writeParts(parts: readonly Uint8Array[]): boolean {
    if (this.destroyed || this.writableEnded) return false;
    if (!this.headersSent) this.respond({ ':status': 200 });
    for (const bytes of parts) if (bytes.length > 0) this.queue.push(bytes);
    this.conn.flushStream(this);
    const ok = this.queue.length === 0 && !this.conn.socketBlocked;
    if (!ok) this.wantsDrain = true;
    return ok;
  }

  end(data?: Uint8Array | string): void {
    if (this.destroyed || this.writableEnded) return;
    if (data !== undefined) this.write(data);
    else if (!this.headersSent) this.respond({ ':status': 200 });
    this.writableEnded = true;
    this.conn.flushStream(this);
  }

  sendTrailers(headers: OutgoingHeaders): void {
    if (this.destroyed || this.localEnded) return;
    this.conn.sendHeaders(this, headers, true);
    this.conn.localEnd(this);
  }

  /** Resets the stream (RST_STREAM with `code`). */
  close(code: number = H2Error.NO_ERROR): void {
    if (this.destroyed) return;
    this.conn.reset(this, code);
  }
}

function frameHeader(length: number, type: number, flags: number, stream: number): Buffer {
  const b = Buffer.allocUnsafe(9);
  b[0] = length >>> 16;
  b[1] = (length >>> 8) & 0xff;
  b[2] = length & 0xff;
  b[3] = type;
  b[4] = flags;
  b.writeUInt32BE(stream, 5);
  return b;
}

function headerList(headers: OutgoingHeaders): [string, string][] {
  const out: [string, string][] = [];
  // Pseudo-headers first (RFC 9113 8.3).
  for (const k of Object.keys(headers)) if (k[0] === ':') out.push([k, String(headers[k])]);
  for (const k of Object.keys(headers)) if (k[0] !== ':') out.push([k.toLowerCase(), String(headers[k])]);
  return out;
}

export interface H2ConnectionEvents {
  /** Server: a new request stream and its headers. Absent on a client connection. */
  onStream?: (stream: H2Stream, headers: HeaderFields) => void;
  /** The peer sent GOAWAY: it takes no new streams (a server lets open ones finish). */
  onGoaway?: (code: number) => void;
}

/**
 * One HTTP/2 connection, server or client: parses frames from the socket, keeps the streams and
 * both flow-control windows. A client connection (no `onStream`) sends the connection preface and
 * opens streams with `request`; the rest is the same code for both roles.
 */
export class H2Connection {
  readonly streams = new Map<number, H2Stream>();
  private readonly decoder: HpackDecoder;
  private readonly input = new ChunkQueue();
  private prefaceSeen = false;
  /** The peer sent GOAWAY. */
  private peerGoaway = false;
  /** Server: the highest stream id the client opened. Client: the highest id we opened. */
  private lastStreamId = 0;
  private readonly isClient: boolean;
  private readonly pings = new Map<string, () => void>();
  /** Highest stream id accepted when we sent GOAWAY; undefined before. */
  private goawayAt: number | undefined;
  private peerInitialWindow = DEFAULT_WINDOW;
  private peerMaxFrame = 16_384;
  private sendWindow = DEFAULT_WINDOW;
  private recvWindow: number;
  private recvConsumed = 0;
  private continuation: { stream: number; endStream: boolean; parts: Buffer[]; size: number } | undefined;
  private out: Uint8Array[] = [];
  private outBytes = 0;
  private flushQueued = false;
  private closed = false;
  socketBlocked = false;

  constructor(readonly socket: net.Socket, private readonly settings: H2Settings, private readonly events: H2ConnectionEvents) {
    this.isClient = events.onStream === undefined;
    this.decoder = new HpackDecoder(4096, settings.maxHeaderListSize);
    this.recvWindow = settings.connectionWindowSize;
    socket.setNoDelay(true);
    // A client refuses server push (ENABLE_PUSH 0); a server limits the client's concurrent streams.
    const ours = [[this.isClient ? 0x2 : 0x3, this.isClient ? 0 : settings.maxConcurrentStreams], [0x4, settings.initialWindowSize], [0x5, settings.maxFrameSize], [0x6, settings.maxHeaderListSize]];
    const s = Buffer.alloc(6 * ours.length);
    ours.forEach(([id, v], i) => {
      s.writeUInt16BE(id, i * 6);
      s.writeUInt32BE(v, i * 6 + 2);
    });
    if (this.isClient) {
      this.prefaceSeen = true; // a server sends no preface, only its SETTINGS
      this.out.push(PREFACE);
      this.outBytes += PREFACE.length;
    }
    this.queueFrame(SETTINGS, 0, 0, s);
    if (settings.connectionWindowSize > DEFAULT_WINDOW) this.windowUpdate(0, settings.connectionWindowSize - DEFAULT_WINDOW);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => {
      this.socketBlocked = false;
      for (const st of this.streams.values()) {
        if (st.wantsDrain && st.queue.length === 0) {
          st.wantsDrain = false;
          st.emit('drain');
        }
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => this.teardown(H2Error.CANCEL));
  }

  /** Sends GOAWAY (no new streams; those open finish) and ends the connection once they have. */
  goaway(): void {
    if (this.closed || this.goawayAt !== undefined) return;
    this.goawayAt = this.lastStreamId;
    this.sendGoaway(H2Error.NO_ERROR, '');
    if (this.streams.size === 0) this.endSocket();
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Client: opens a stream with these request headers (the body follows with write/end). */
  request(headers: OutgoingHeaders): H2Stream {
    if (!this.isClient) throw new Error('request() is for client connections');
    if (this.closed || this.peerGoaway) throw new Error('the connection is closed or going away');
    const id = this.lastStreamId === 0 ? 1 : this.lastStreamId + 2;
    this.lastStreamId = id;
    const st = new H2Stream(this, id, this.peerInitialWindow, this.settings.initialWindowSize);
    st.headersSent = true;
    st.on('error', () => undefined);
    this.streams.set(id, st);
    this.sendHeaders(st, headers, false);
    return st;
  }

  /** Sends a PING; `onAck` runs when the peer answers it. */
  ping(onAck: () => void): void {
    const payload = Buffer.allocUnsafe(8);
    payload.writeDoubleBE(Math.random());
    this.pings.set(payload.toString('hex'), onAck);
    this.queueFrame(PING, 0, 0, payload);
  }

  // ------------------------------------------------------------------ input

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.input.push(chunk);
    try {
      if (!this.prefaceSeen) {
        if (this.input.length < PREFACE.length) return;
        if (!this.input.take(PREFACE.length).equals(PREFACE)) {
          this.socket.destroy();
          this.closed = true;
          return;
        }
        this.prefaceSeen = true;
      }
      while (this.input.length >= 9 && !this.closed) {
        const head = this.input.peek(9);
        const length = (head[0] << 16) | (head[1] << 8) | head[2];
        if (length > this.settings.maxFrameSize) throw new ProtocolError(H2Error.FRAME_SIZE_ERROR, `frame of ${length} bytes is over SETTINGS_MAX_FRAME_SIZE ${this.settings.maxFrameSize}`);
        if (this.input.length < 9 + length) break;
        const type = head[3];
        const flags = head[4];
        const stream = head.readUInt32BE(5) & 0x7fffffff;
        this.input.take(9);
        const payload = this.input.take(length, type === DATA ? DATA_LEAD : 0);
        this.onFrame(type, flags, stream, payload);
      }
    } catch (e) {
      if (e instanceof ProtocolError) this.fail(e.code, e.message);
      else if (e instanceof HpackError) this.fail(H2Error.COMPRESSION_ERROR, e.message);
      else this.fail(H2Error.INTERNAL_ERROR, (e as Error).message);
    }
    this.scheduleFlush();
  }

  private onFrame(type: number, flags: number, id: number, p: Buffer): void {
    if (this.continuation && type !== CONTINUATION) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `frame type ${type} inside a header block (CONTINUATION expected)`);
    switch (type) {
      case DATA:
        return this.onDataFrame(flags, id, p);
      case HEADERS: {
        // Streams are client-initiated (odd) in both directions: we neither push nor accept pushes.
        if (id === 0 || id % 2 === 0) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `HEADERS on stream ${id}`);
        let start = 0;
        let end = p.length;
        if (flags & PADDED) {
          if (p.length < 1) throw new ProtocolError(H2Error.FRAME_SIZE_ERROR, 'padded HEADERS without a pad length');
          end -= p[0];
          start = 1;
        }
        if (flags & PRIORITY_FLAG) start += 5;
        if (start > end) throw new ProtocolError(H2Error.PROTOCOL_ERROR, 'HEADERS padding exceeds its payload');
        const block = p.subarray(start, end);
        if (flags & END_HEADERS) return this.onHeaderBlock(id, block, (flags & END_STREAM) !== 0);
        this.continuation = { stream: id, endStream: (flags & END_STREAM) !== 0, parts: [Buffer.from(block)], size: block.length };
        return;
      }
      case CONTINUATION: {
        const c = this.continuation;
        if (!c || c.stream !== id) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `CONTINUATION on stream ${id} outside a header block`);
        c.parts.push(Buffer.from(p));
        c.size += p.length;
        if (c.size > 2 * this.settings.maxHeaderListSize) throw new ProtocolError(H2Error.ENHANCE_YOUR_CALM, `header block over ${2 * this.settings.maxHeaderListSize} bytes`);
        if (flags & END_HEADERS) {
          this.continuation = undefined;
          this.onHeaderBlock(id, Buffer.concat(c.parts), c.endStream);
        }
        return;
      }
      case PRIORITY:
        if (id === 0) throw new ProtocolError(H2Error.PROTOCOL_ERROR, 'PRIORITY on stream 0');
        if (p.length !== 5) throw new ProtocolError(H2Error.FRAME_SIZE_ERROR, `PRIORITY of ${p.length} bytes`);
        return;
      case RST_STREAM: {
        if (id === 0) throw new ProtocolError(H2Error.PROTOCOL_ERROR, 'RST_STREAM on stream 0');
        if (p.length !== 4) throw new ProtocolError(H2Error.FRAME_SIZE_ERROR, `RST_STREAM of ${p.length} bytes`);
        if (id > this.lastStreamId) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `RST_STREAM on idle stream ${id}`);
        const st = this.streams.get(id);
        if (st) this.closeStream(st, p.readUInt32BE(0));
        return;
      }
      case SETTINGS:
        return this.onSettings(flags, id, p);
      case PUSH_PROMISE:
        throw new ProtocolError(H2Error.PROTOCOL_ERROR, this.isClient ? 'PUSH_PROMISE, though we sent SETTINGS_ENABLE_PUSH 0' : 'PUSH_PROMISE from a client');
      case PING:
        if (id !== 0) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `PING on stream ${id}`);
        if (p.length !== 8) throw new ProtocolError(H2Error.FRAME_SIZE_ERROR, `PING of ${p.length} bytes`);
        if (!(flags & ACK)) this.queueFrame(PING, ACK, 0, Buffer.from(p));
        else {
          const key = p.toString('hex');
          const onAck = this.pings.get(key);
          this.pings.delete(key);
          onAck?.();
        }
        return;
      case GOAWAY:
        if (id !== 0) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `GOAWAY on stream ${id}`);
        if (p.length < 8) throw new ProtocolError(H2Error.FRAME_SIZE_ERROR, `GOAWAY of ${p.length} bytes`);
        // The peer takes no new streams; those open finish (a client then closes the connection).
        this.peerGoaway = true;
        this.events.onGoaway?.(p.readUInt32BE(4));
        return;
      case WINDOW_UPDATE: {
        if (p.length !== 4) throw new ProtocolError(H2Error.FRAME_SIZE_ERROR, `WINDOW_UPDATE of ${p.length} bytes`);
        const inc = p.readUInt32BE(0) & 0x7fffffff;
        if (id === 0) {
          if (inc === 0) throw new ProtocolError(H2Error.PROTOCOL_ERROR, 'WINDOW_UPDATE of 0 on the connection');
          this.sendWindow += inc;
          if (this.sendWindow > MAX_WINDOW) throw new ProtocolError(H2Error.FLOW_CONTROL_ERROR, 'connection window over 2^31-1');
          for (const st of this.streams.values()) if (st.queue.length > 0 || (st.writableEnded && !st.localEnded)) this.flushStream(st);
          return;
        }
        const st = this.streams.get(id);
        if (!st) return;
        if (inc === 0) return this.reset(st, H2Error.PROTOCOL_ERROR);
        st.sendWindow += inc;
        if (st.sendWindow > MAX_WINDOW) return this.reset(st, H2Error.FLOW_CONTROL_ERROR);
        this.flushStream(st);
        return;
      }
      default:
        // Unknown frame types are ignored (RFC 9113 4.1).
        return;
    }
  }

  private onSettings(flags: number, id: number, p: Buffer): void {
    if (id !== 0) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `SETTINGS on stream ${id}`);
    if (flags & ACK) {
      if (p.length !== 0) throw new ProtocolError(H2Error.FRAME_SIZE_ERROR, 'SETTINGS ack with a payload');
      return;
    }
    if (p.length % 6 !== 0) throw new ProtocolError(H2Error.FRAME_SIZE_ERROR, `SETTINGS of ${p.length} bytes`);
    for (let i = 0; i < p.length; i += 6) {
      const key = p.readUInt16BE(i);
      const value = p.readUInt32BE(i + 2);
      if (key === 0x4) {
        if (value > MAX_WINDOW) throw new ProtocolError(H2Error.FLOW_CONTROL_ERROR, `SETTINGS_INITIAL_WINDOW_SIZE ${value}`);
        const delta = value - this.peerInitialWindow;
        this.peerInitialWindow = value;
        for (const st of this.streams.values()) st.sendWindow += delta;
      } else if (key === 0x5) {
        if (value < 16_384 || value > 16_777_215) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `SETTINGS_MAX_FRAME_SIZE ${value}`);
        this.peerMaxFrame = value;
      } else if (key === 0x2 && value > 1) {
        throw new ProtocolError(H2Error.PROTOCOL_ERROR, `SETTINGS_ENABLE_PUSH ${value}`);
      }
      // HEADER_TABLE_SIZE: our encoder never indexes; the others do not concern a server.
    }
    this.queueFrame(SETTINGS, ACK, 0, Buffer.alloc(0));
    for (const st of this.streams.values()) if (st.queue.length > 0) this.flushStream(st);
  }

  private onHeaderBlock(id: number, block: Buffer, endStream: boolean): void {
    // Every block is decoded, even one of a stream we refuse: it changes the HPACK table.
    const fields = this.decoder.decode(block);
    if (this.isClient) return this.onResponseHeaders(id, fields, endStream);
    const existing = this.streams.get(id);
    if (existing) {
      // Trailers from the client: they must end the stream.
      if (existing.remoteEnded || !endStream) return this.reset(existing, H2Error.PROTOCOL_ERROR);
      existing.remoteEnded = true;
      existing.emit('end');
      this.maybeClosed(existing);
      return;
    }
    // A stream we already closed (answered, reset, refused): headers still in flight from the client are dropped (RFC 9113 5.1).
    if (id <= this.lastStreamId) return;
    this.lastStreamId = id;
    if (this.goawayAt !== undefined || this.streams.size >= this.settings.maxConcurrentStreams) {
      this.queueFrame(RST_STREAM, 0, id, u32(H2Error.REFUSED_STREAM));
      return;
    }
    if (fields[':method'] === undefined || fields[':path'] === undefined) {
      this.queueFrame(RST_STREAM, 0, id, u32(H2Error.PROTOCOL_ERROR));
      return;
    }
    const st = new H2Stream(this, id, this.peerInitialWindow, this.settings.initialWindowSize);
    st.on('error', () => undefined);
    this.streams.set(id, st);
    this.events.onStream!(st, fields);
    if (endStream && !st.destroyed) {
      st.remoteEnded = true;
      st.emit('end');
      this.maybeClosed(st);
    }
  }

  /** Client: a header block of one of our streams: the response's (first) or its trailers (last, ending the stream). */
  private onResponseHeaders(id: number, fields: HeaderFields, endStream: boolean): void {
    if (id > this.lastStreamId) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `HEADERS on stream ${id}, which we did not open`);
    const st = this.streams.get(id);
    if (!st || st.remoteEnded) return; // closed by us already: dropped
    if (!st.responseSeen) {
      st.responseSeen = true;
      st.emit('response', fields);
    } else {
      if (!endStream) return this.reset(st, H2Error.PROTOCOL_ERROR);
      st.emit('trailers', fields);
    }
    if (endStream && !st.destroyed) {
      st.remoteEnded = true;
      st.emit('end');
      this.maybeClosed(st);
    }
  }

  private onDataFrame(flags: number, id: number, p: Buffer): void {
    if (id === 0) throw new ProtocolError(H2Error.PROTOCOL_ERROR, 'DATA on stream 0');
    // Flow control counts the whole payload, padding included.
    if (p.length > this.recvWindow) throw new ProtocolError(H2Error.FLOW_CONTROL_ERROR, 'DATA beyond the connection window');
    this.recvWindow -= p.length;
    this.recvConsumed += p.length;
    if (this.recvConsumed >= this.settings.connectionWindowSize / 2) {
      this.windowUpdate(0, this.recvConsumed);
      this.recvWindow += this.recvConsumed;
      this.recvConsumed = 0;
    }
    let body = p;
    if (flags & PADDED) {
      if (p.length < 1 || p[0] >= p.length) throw new ProtocolError(H2Error.PROTOCOL_ERROR, 'DATA padding exceeds its payload');
      body = p.subarray(1, p.length - p[0]);
    }
    const st = this.streams.get(id);
    if (!st || st.remoteEnded) {
      if (id > this.lastStreamId) throw new ProtocolError(H2Error.PROTOCOL_ERROR, `DATA on idle stream ${id}`);
      // A stream we already closed (reset, refused, answered early): the bytes are dropped.
      if (st) this.reset(st, H2Error.STREAM_CLOSED);
      return;
    }
    if (p.length > st.recvWindow) return this.reset(st, H2Error.FLOW_CONTROL_ERROR);
    st.recvWindow -= p.length;
    st.recvConsumed += p.length;
    const end = (flags & END_STREAM) !== 0;
    if (!end && st.recvConsumed >= this.settings.initialWindowSize / 2) {
      this.windowUpdate(id, st.recvConsumed);
      st.recvWindow += st.recvConsumed;
      st.recvConsumed = 0;
    }
    if (body.length > 0) st.emit('data', body);
    if (end && !st.destroyed) {
      st.remoteEnded = true;
      st.emit('end');
      this.maybeClosed(st);
    }
  }

  // ------------------------------------------------------------------ output

  /** @internal */ sendHeaders(st: H2Stream, headers: OutgoingHeaders, endStream: boolean): void {
    const block = encodeHeaders(headerList(headers));
    // Our header blocks are small; one larger than the peer's frame size goes out with CONTINUATION.
    const max = this.peerMaxFrame;
    if (block.length <= max) {
      this.queueFrame(HEADERS, END_HEADERS | (endStream ? END_STREAM : 0), st.id, block);
      return;
    }
    this.queueFrame(HEADERS, endStream ? END_STREAM : 0, st.id, block.subarray(0, max));
    for (let at = max; at < block.length; at += max) this.queueFrame(CONTINUATION, at + max >= block.length ? END_HEADERS : 0, st.id, block.subarray(at, at + max));
  }

  /** @internal Sends what the windows allow of a stream's queued bytes; ends it when all is sent. */
  flushStream(st: H2Stream): void {
    if (st.destroyed) return;
    while (st.queue.length > 0) {
      const room = Math.min(st.sendWindow, this.sendWindow, this.peerMaxFrame);
      if (room <= 0) return;
      // One DATA frame of as many queued chunks as fit: a message written in pieces (prefix, fields,
      // tensor bytes) arrives as one frame, which the receiver hands on without joining pieces.
      const parts: Uint8Array[] = [];
      let n = 0;
      while (st.queue.length > 0 && n < room) {
        const chunk = st.queue[0];
        const left = chunk.length - st.queueOffset;
        const k = Math.min(left, room - n);
        parts.push(k === chunk.length ? chunk : chunk.subarray(st.queueOffset, st.queueOffset + k));
        n += k;
        if (k === left) {
          st.queue.shift();
          st.queueOffset = 0;
        } else st.queueOffset += k;
      }
      const endHere = st.queue.length === 0 && st.writableEnded && !st.waitForTrailers;
      this.queueFrame(DATA, endHere ? END_STREAM : 0, st.id, parts, n);
      st.sendWindow -= n;
      this.sendWindow -= n;
      if (endHere) {
        this.localEnd(st);
        return;
      }
    }
    // A writer told to wait because of the peer's window hears 'drain' once its bytes are out (the socket's own 'drain' covers the rest).
    if (st.wantsDrain && !this.socketBlocked && !st.writableEnded) {
      st.wantsDrain = false;
      process.nextTick(() => st.emit('drain'));
    }
    if (!st.writableEnded || st.localEnded) return;
    if (st.waitForTrailers) {
      if (!st.trailersAsked) {
        st.trailersAsked = true;
        st.emit('wantTrailers');
        // No trailers given: end the stream with an empty DATA frame.
        if (!st.localEnded && !st.destroyed) {
          this.queueFrame(DATA, END_STREAM, st.id, Buffer.alloc(0));
          this.localEnd(st);
        }
      }
      return;
    }
    this.queueFrame(DATA, END_STREAM, st.id, Buffer.alloc(0));
    this.localEnd(st);
  }

  /** @internal Our side of the stream is done (END_STREAM queued). */
  localEnd(st: H2Stream): void {
    if (st.localEnded) return;
    st.localEnded = true;
    st.writableEnded = true;
    if (!st.remoteEnded && !this.isClient) {
      // Answered before the request ended: ask the client to stop sending (RFC 9113 8.1).
      this.queueFrame(RST_STREAM, 0, st.id, u32(H2Error.NO_ERROR));
      st.remoteEnded = true;
    }
    this.maybeClosed(st);
  }

  /** @internal */ reset(st: H2Stream, code: number): void {
    if (st.destroyed) return;
    this.queueFrame(RST_STREAM, 0, st.id, u32(code));
    this.closeStream(st, code);
  }

  private maybeClosed(st: H2Stream): void {
    if (st.localEnded && st.remoteEnded) this.closeStream(st, H2Error.NO_ERROR);
  }

  private closeStream(st: H2Stream, code: number): void {
    if (st.destroyed) return;
    st.destroyed = true;
    st.rstCode = code;
    st.queue = [];
    this.streams.delete(st.id);
    process.nextTick(() => st.emit('close'));
    if (this.streams.size === 0 && this.goawayAt !== undefined) this.endSocket();
  }

  private windowUpdate(stream: number, inc: number): void {
    this.queueFrame(WINDOW_UPDATE, 0, stream, u32(inc));
  }

  private sendGoaway(code: number, message: string): void {
    const p = Buffer.alloc(8 + Buffer.byteLength(message));
    // The last stream the peer opened that we handle: a client takes none from the server.
    p.writeUInt32BE(this.isClient ? 0 : this.lastStreamId, 0);
    p.writeUInt32BE(code, 4);
    p.write(message, 8);
    this.queueFrame(GOAWAY, 0, 0, p);
  }

  /** Queues a frame whose payload is `payload`, or the pieces `payload` of `length` bytes in all. */
  private queueFrame(type: number, flags: number, stream: number, payload: Uint8Array | Uint8Array[], length = (payload as Uint8Array).length): void {
    this.out.push(frameHeader(length, type, flags, stream));
    if (Array.isArray(payload)) {
      for (const part of payload) this.out.push(part);
    } else if (length > 0) this.out.push(payload);
    this.outBytes += 9 + length;
    this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushQueued || this.out.length === 0) return;
    this.flushQueued = true;
    queueMicrotask(() => this.flush());
  }

  private flush(): void {
    this.flushQueued = false;
    const out = this.out;
    if (out.length === 0 || this.socket.destroyed) return;
    const bytes = this.outBytes;
    this.out = [];
    this.outBytes = 0;
    let ok: boolean;
    if (out.length === 1) ok = this.socket.write(out[0]);
    else if (bytes <= JOIN_BELOW) ok = this.socket.write(Buffer.concat(out, bytes));
    else {
      this.socket.cork();
      for (let i = 0; i < out.length - 1; i++) this.socket.write(out[i]);
      ok = this.socket.write(out[out.length - 1]);
      this.socket.uncork();
    }
    if (!ok) this.socketBlocked = true;
  }

  private endSocket(): void {
    this.flush();
    if (!this.socket.destroyed) this.socket.end();
  }

  /** A connection error: GOAWAY with `code`, then the socket closes. */
  private fail(code: number, message: string): void {
    if (this.closed) return;
    this.sendGoaway(code, message);
    this.flush();
    this.closed = true;
    this.socket.end();
    this.teardown(code);
    setTimeout(() => this.socket.destroy(), 1_000).unref();
  }

  private teardown(code: number): void {
    this.closed = true;
    for (const st of [...this.streams.values()]) this.closeStream(st, code);
  }
}

function u32(v: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(v, 0);
  return b;
}

export interface H2Server {
  server: net.Server;
  listen(host: string, port: number): Promise<number>;
  /** Stops accepting, sends GOAWAY on every connection, and after `graceMs` drops what is left. */
  close(graceMs?: number): Promise<void>;
}

/** An HTTP/2 server calling `onStream(stream, headers)` for every request. */
export function createH2Server(settings: H2Settings, onStream: (stream: H2Stream, headers: HeaderFields) => void): H2Server {
  const connections = new Set<H2Connection>();
  let closing = false;
  const server = net.createServer((socket) => {
    const conn = new H2Connection(socket, settings, { onStream });
    connections.add(conn);
    socket.on('close', () => connections.delete(conn));
    if (closing) conn.goaway();
  });
  return {
    server,
    listen: (host, port) => new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      server.once('error', onError);
      server.listen(port, host, () => {
        server.off('error', onError);
        const a = server.address();
        resolve(typeof a === 'object' && a ? a.port : port);
      });
    }),
    close: async (graceMs = 1_000) => {
      closing = true;
      const closed = new Promise<void>((r) => server.close(() => r()));
      for (const c of connections) c.goaway();
      const timer = setTimeout(() => {
        for (const c of connections) c.destroy();
      }, graceMs);
      await closed;
      clearTimeout(timer);
    },
  };
}

/**
 * A client connection to `host:port`. The preface and our SETTINGS are queued at once (the socket
 * sends them when it connects); watch `connection.socket` for 'connect', 'error' and 'close'.
 */
export function connectH2(host: string, port: number, settings: H2Settings, events: Omit<H2ConnectionEvents, 'onStream'> = {}): H2Connection {
  return new H2Connection(net.connect(port, host), settings, { onGoaway: events.onGoaway });
}
