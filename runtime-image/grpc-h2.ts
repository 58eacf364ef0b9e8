// gRPC's wire protocol (HTTP/2, length-prefixed messages, grpc-timeout, grpc-status trailers) without
// grpc-js, on our own HTTP/2 (h2/): createGrpcServer serves the OIP front door and the rank port (any
// gRPC client talks to it: tritonclient, grpc-js), and the stage links are its client (StageLink).
// Every request pays it: measured on loopback (2-core machine), a unary echo from a bare node:http2
// client takes 0.16-0.17 ms p50 on our server against 0.24-0.28 on grpc-js's (bench:serve's floor;
// 0.20 on a node:http2 server, when the rank port still used one). Requests compressed with gzip or
// deflate are accepted; replies are not compressed.
import { EventEmitter } from 'node:events';
import { gunzipSync, inflateSync } from 'node:zlib';
import { CancelSource, type CancelSignal } from './cancel.js';
import { ChunkQueue } from './h2/chunks.js';
import type { HeaderFields } from './h2/hpack.js';
import { createH2Server, H2Error, type H2Server, type H2Settings, type H2Stream } from './h2/server.js';

/** gRPC status codes used here. */
export const GrpcStatus = { OK: 0, CANCELLED: 1, UNKNOWN: 2, INVALID_ARGUMENT: 3, DEADLINE_EXCEEDED: 4, NOT_FOUND: 5, ALREADY_EXISTS: 6, RESOURCE_EXHAUSTED: 8, FAILED_PRECONDITION: 9, UNIMPLEMENTED: 12, INTERNAL: 13, UNAVAILABLE: 14 } as const;

const ACCEPT_ENCODING = 'identity,deflate,gzip';

/**
 * HTTP/2 settings of both ends (servers and the stage links' client): 16 MiB stream windows (the
 * default 64 KiB would hold every activation above that size for WINDOW_UPDATE round trips between
 * hosts), a 64 MiB connection window, frames of up to 1 MiB. Our sender writes a message in frames as
 * large as the peer accepts, so a 64 KiB activation between ranks is one DATA frame.
 */
export const H2_SETTINGS: H2Settings = { initialWindowSize: 16 << 20, maxFrameSize: 1 << 20, connectionWindowSize: 64 << 20, maxConcurrentStreams: 1000, maxHeaderListSize: 64 * 1024 };

export class GrpcWireError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

/** The 5-byte gRPC message prefix (uncompressed) followed by `body`, in one buffer. */
export function frameMessage(body: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = 0;
  out.writeUInt32BE(body.length, 1);
  out.set(body, 5);
  return out;
}

/** A message ready for the stream: one buffer, or pieces written one after the other. */
export type Framed = Buffer | readonly Uint8Array[];

/** Bodies of at least this many bytes are not copied behind their prefix (see framed). */
const COPY_BELOW = 64 * 1024;

/** `body` as a gRPC message: copied behind its prefix when small, else written as prefix + body. */
export function framed(body: Uint8Array): Framed {
  if (body.length < COPY_BELOW) return frameMessage(body);
  const prefix = Buffer.allocUnsafe(5);
  prefix[0] = 0;
  prefix.writeUInt32BE(body.length, 1);
  return [prefix, body];
}

/** Writes a framed message (and ends the stream after it when `end`); false when the stream wants a pause. */
export function writeFramed(stream: H2Stream, message: Framed, end: boolean): boolean {
  if (Buffer.isBuffer(message)) {
    if (end) stream.end(message);
    return end || stream.write(message);
  }
  const ok = stream.writeParts(message);
  if (end) stream.end();
  return end || ok;
}

/**
 * Splits a gRPC byte stream into messages. A message inside one received chunk is handed on as a view
 * of it (no copy); one spread over chunks is copied once. A compressed message is inflated by the
 * call's `grpc-encoding` (gzip or deflate). Messages over `maxBytes` (before or after inflating), a
 * compressed message without a known encoding, or one that does not inflate throw a GrpcWireError.
 */
export class MessageReader {
  private readonly input = new ChunkQueue();
  private need = -1;
  private compressed = false;

  constructor(private readonly maxBytes: number, private readonly onMessage: (body: Buffer) => void, private readonly encoding?: string) {}

  push(chunk: Buffer): void {
    this.input.push(chunk);
    for (;;) {
      if (this.need < 0) {
        if (this.input.length < 5) return;
        const head = this.input.take(5);
        this.compressed = head[0] === 1;
        if (head[0] > 1) throw new GrpcWireError(GrpcStatus.INTERNAL, `message flag ${head[0]} is neither 0 nor 1`);
        this.need = head.readUInt32BE(1);
        if (this.need > this.maxBytes) throw new GrpcWireError(GrpcStatus.RESOURCE_EXHAUSTED, `message of ${this.need} bytes is over the limit of ${this.maxBytes}`);
      }
      if (this.input.length < this.need) return;
      const body = this.input.take(this.need);
      this.need = -1;
      this.onMessage(this.compressed ? this.inflate(body) : body);
    }
  }

  private inflate(body: Buffer): Buffer {
    const encoding = this.encoding ?? 'identity';
    const inflate = encoding === 'gzip' ? gunzipSync : encoding === 'deflate' ? inflateSync : undefined;
    if (!inflate) {
      if (encoding === 'identity') throw new GrpcWireError(GrpcStatus.INTERNAL, 'a message is marked compressed but the call has no grpc-encoding');
      throw new GrpcWireError(GrpcStatus.UNIMPLEMENTED, `grpc-encoding '${encoding}' is not supported (${ACCEPT_ENCODING})`);
    }
    try {
      return inflate(body, { maxOutputLength: this.maxBytes });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE') throw new GrpcWireError(GrpcStatus.RESOURCE_EXHAUSTED, `message inflates to over the limit of ${this.maxBytes} bytes`);
      throw new GrpcWireError(GrpcStatus.INTERNAL, `message does not inflate with ${encoding}: ${(e as Error).message}`);
    }
  }
}

/** One bidirectional call on the server: 'data' (decoded message), 'end' (client half-closed), 'cancelled'. */
export interface ServerStreamCall<Req, Res> extends EventEmitter {
  write(message: Res): boolean;
  end(): void;
  on(event: 'data', listener: (m: Req) => void): this;
  on(event: 'end' | 'cancelled', listener: () => void): this;
}

/** Request headers as the transport gives them. */
type RequestHeaders = HeaderFields;

/** What a handler knows of its call: the client's deadline (grpc-timeout) and its cancellation. */
export interface CallContext {
  /** Epoch milliseconds, when the client set grpc-timeout. */
  deadline?: number;
  /** Aborted when the client cancels (RST_STREAM) or the connection goes away before the answer. */
  signal: CancelSignal;
}

/**
 * `decode` reads a message body; `encodeFramed` makes a reply with its gRPC prefix (see framed).
 * A handler that throws a GrpcWireError answers with its code and message; anything else is INTERNAL.
 */
export type MethodHandler =
  | { kind: 'unary'; decode: (b: Buffer) => any; encodeFramed: (m: any) => Framed; handle: (request: any, ctx: CallContext) => unknown }
  | { kind: 'serverStream'; decode: (b: Buffer) => any; encodeFramed: (m: any) => Framed; open: (request: any, call: ServerStreamCall<never, any>, ctx: CallContext) => void }
  | { kind: 'bidi'; decode: (b: Buffer) => any; encodeFramed: (m: any) => Framed; open: (call: ServerStreamCall<any, any>) => void };

/** grpc-timeout ("100m", "5S", ...) as epoch milliseconds; undefined when absent or malformed. */
export function deadlineOf(timeout: unknown, now = Date.now()): number | undefined {
  const m = /^(\d{1,8})([HMSmun])$/.exec(String(timeout ?? ''));
  if (!m) return undefined;
  const unitMs = { H: 3_600_000, M: 60_000, S: 1_000, m: 1, u: 1e-3, n: 1e-6 }[m[2] as 'H'];
  return now + Number(m[1]) * unitMs;
}

/** A gRPC server is an HTTP/2 server whose streams are calls. */
export type GrpcServer = H2Server;

/** grpc-message as the gRPC spec wants it: bytes outside printable ASCII, and '%', as %XX. */
export function encodeGrpcMessage(message: string): string {
  let out = '';
  for (const b of Buffer.from(message, 'utf8')) out += b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  return out;
}

export function decodeGrpcMessage(value: unknown): string {
  const s = String(value ?? '');
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function trailersOnly(stream: H2Stream, code: number, message: string): void {
  if (stream.destroyed || stream.headersSent) return;
  stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(code), 'grpc-message': encodeGrpcMessage(message) }, { endStream: true });
}

/** Checks a request's method and content type, finds its handler and starts the call. */
function startCall(stream: H2Stream, headers: RequestHeaders, methods: Record<string, MethodHandler>, maxBytes: number): void {
  const contentType = String(headers['content-type'] ?? '');
  if (headers[':method'] !== 'POST' || !contentType.startsWith('application/grpc')) {
    stream.respond({ ':status': 415, 'content-type': 'text/plain' });
    stream.end('this port speaks gRPC (application/grpc)\n');
    return;
  }
  const path = String(headers[':path']);
  const method = methods[path];
  if (!method) return trailersOnly(stream, GrpcStatus.UNIMPLEMENTED, `unknown method ${path}`);
  const encoding = headers['grpc-encoding'] === undefined ? undefined : String(headers['grpc-encoding']);
  if (method.kind === 'bidi') return serveBidi(stream, method, maxBytes, encoding);
  serveOneRequest(stream, method, maxBytes, encoding, deadlineOf(headers['grpc-timeout']));
}

/** A gRPC server for the given methods (keyed by path, e.g. '/pkg.Service/Method') on our own HTTP/2 transport (h2/server.ts). */
export function createGrpcServer(methods: Record<string, MethodHandler>, opts: { maxMessageBytes: number }): GrpcServer {
  return createH2Server(H2_SETTINGS, (stream, headers) => startCall(stream, headers, methods, opts.maxMessageBytes));
}

function codeOf(e: unknown): [number, string] {
  return e instanceof GrpcWireError ? [e.code, e.message] : [GrpcStatus.INTERNAL, (e as Error)?.message ?? String(e)];
}

/** Unary and server-streaming calls: one request message, then the handler. */
function serveOneRequest(stream: H2Stream, method: Exclude<MethodHandler, { kind: 'bidi' }>, maxBytes: number, encoding: string | undefined, deadline: number | undefined): void {
  let request: Buffer | undefined;
  let count = 0;
  const reader = new MessageReader(maxBytes, (b) => {
    request = b;
    count++;
  }, encoding);
  const controller = new CancelSource();
  let finished = false;
  // An object method, not a named arrow: tsx (esbuild keepNames) wraps every named closure, per call.
  const call = {
    fail(e: unknown) {
      finished = true;
      trailersOnly(stream, ...codeOf(e));
    },
  };
  stream.on('close', () => {
    if (!finished) controller.abort();
  });
  stream.on('data', (chunk: Buffer) => {
    if (finished) return;
    try {
      reader.push(chunk);
    } catch (e) {
      call.fail(e);
    }
  });
  stream.on('end', () => {
    if (finished) return;
    if (count !== 1 || !request) return call.fail(new GrpcWireError(GrpcStatus.UNIMPLEMENTED, `this method takes one request message, got ${count}`));
    let decoded: unknown;
    try {
      decoded = method.decode(request);
    } catch (e) {
      return call.fail(new GrpcWireError(GrpcStatus.INTERNAL, `request does not decode: ${(e as Error).message}`));
    }
    const ctx: CallContext = { deadline, signal: controller.signal };
    if (method.kind === 'serverStream') return streamReplies(stream, method, decoded, ctx, () => (finished = true));
    let answer: Promise<unknown>;
    try {
      answer = Promise.resolve(method.handle(decoded, ctx));
    } catch (e) {
      return call.fail(e);
    }
    answer.then((value) => {
      if (stream.destroyed || finished) return;
      const reply = method.encodeFramed(value);
      finished = true;
      stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-accept-encoding': ACCEPT_ENCODING }, { waitForTrailers: true });
      stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      writeFramed(stream, reply, true);
    }).catch((e) => {
      if (!stream.destroyed && !finished) call.fail(e);
    });
  });
}

function streamReplies(stream: H2Stream, method: Extract<MethodHandler, { kind: 'serverStream' }>, request: unknown, ctx: CallContext, finish: () => void): void {
  const call = new EventEmitter() as ServerStreamCall<never, any>;
  stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-accept-encoding': ACCEPT_ENCODING }, { waitForTrailers: true });
  stream.once('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
  call.write = (message) => (stream.destroyed || stream.writableEnded ? false : writeFramed(stream, method.encodeFramed(message), false));
  call.end = () => {
    finish();
    if (!stream.destroyed && !stream.writableEnded) stream.end();
  };
  ctx.signal.addEventListener('abort', () => call.emit('cancelled'), { once: true });
  method.open(request, call, ctx);
}

function serveBidi(stream: H2Stream, method: Extract<MethodHandler, { kind: 'bidi' }>, maxBytes: number, encoding: string | undefined): void {
  const call = new EventEmitter() as ServerStreamCall<any, any>;
  let done = false;
  let trailersSent = false;
  let cancelled = false;
  let status: { code: number; message: string } = { code: GrpcStatus.OK, message: '' };
  stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-accept-encoding': ACCEPT_ENCODING }, { waitForTrailers: true });
  stream.once('wantTrailers', () => {
    trailersSent = true;
    const t: Record<string, string> = { 'grpc-status': String(status.code) };
    if (status.message) t['grpc-message'] = encodeGrpcMessage(status.message);
    stream.sendTrailers(t);
  });
  call.write = (message) => {
    if (done || stream.destroyed || stream.writableEnded) return false;
    return writeFramed(stream, method.encodeFramed(message), false);
  };
  call.end = () => {
    if (done) return;
    done = true;
    if (!stream.destroyed && !stream.writableEnded) stream.end();
  };
  const cancel = () => {
    if (cancelled) return;
    cancelled = true;
    done = true;
    call.emit('cancelled');
  };
  const reader = new MessageReader(maxBytes, (b) => call.emit('data', method.decode(b)), encoding);
  stream.on('data', (chunk: Buffer) => {
    if (done) return;
    try {
      reader.push(chunk);
    } catch (e) {
      status = { code: e instanceof GrpcWireError ? e.code : GrpcStatus.INTERNAL, message: (e as Error).message };
      cancelled = true;
      call.emit('cancelled');
      call.end();
    }
  });
  stream.on('end', () => call.emit('end'));
  stream.on('close', () => {
    // Reset by the client (RST_STREAM), or closed before our trailers went out (the connection went away).
    if (!cancelled && (stream.rstCode !== H2Error.NO_ERROR || !trailersSent)) cancel();
  });
  method.open(call);
}
