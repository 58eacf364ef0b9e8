// Our HTTP/2 server at the frame level (a raw socket speaking HTTP/2), and with node:http2's client
// (nghttp2) for flow control and graceful close. The gRPC calls themselves are tested against
// grpc-js in grpc-h2.test.ts, and against tritonclient through the front door.
import { afterEach, describe, expect, it } from 'vitest';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { type CallContext, createGrpcServer, framed, frameMessage, type GrpcH2Server } from '../grpc-h2.js';
import { encodeHeaders, HpackDecoder } from './hpack.js';
import { createH2Server, H2Error } from './server.js';

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', 'latin1');

function frame(type: number, flags: number, stream: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}

interface Frame { type: number; flags: number; stream: number; payload: Buffer }

/** A raw HTTP/2 client: sends bytes, collects the frames the server sends, and whether it closed. */
async function rawClient(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  const frames: Frame[] = [];
  let buf = Buffer.alloc(0);
  let closed = false;
  const waiters: (() => void)[] = [];
  const wake = () => waiters.splice(0).forEach((w) => w());
  socket.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
      const len = buf.readUIntBE(0, 3);
      frames.push({ type: buf[3], flags: buf[4], stream: buf.readUInt32BE(5), payload: buf.subarray(9, 9 + len) });
      buf = buf.subarray(9 + len);
    }
    wake();
  });
  socket.on('error', () => undefined);
  socket.on('close', () => {
    closed = true;
    wake();
  });
  const until = async (what: string, ok: () => boolean) => {
    const deadline = Date.now() + 5_000;
    while (!ok()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(frames.map((f) => [f.type, f.flags, f.stream]))}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 50);
      });
    }
  };
  return {
    socket,
    frames,
    send: (b: Buffer) => socket.write(b),
    frame: (type: number, stream?: number) => until(`frame type ${type}`, () => frames.some((f) => f.type === type && (stream === undefined || f.stream === stream))).then(() => frames.find((f) => f.type === type && (stream === undefined || f.stream === stream))!),
    /** Every frame of `type` on `stream`, once there are `n`. */
    frames_: (type: number, stream: number, n: number) => until(`${n} frames of type ${type}`, () => frames.filter((f) => f.type === type && f.stream === stream).length >= n).then(() => frames.filter((f) => f.type === type && f.stream === stream)),
    closed: () => until('the server to close the connection', () => closed),
  };
}

const echoMethods = (slow?: (ctx: CallContext) => Promise<unknown>) => ({
  '/t.E/Echo': { kind: 'unary' as const, decode: (b: Buffer) => b, encodeFramed: framed, handle: (m: Buffer) => m },
  '/t.E/Slow': { kind: 'unary' as const, decode: (b: Buffer) => b, encodeFramed: framed, handle: (_m: Buffer, ctx: CallContext) => slow?.(ctx) ?? Buffer.from('late') },
});

/** A Slow handler that answers 'late' once released; `inHandler` resolves when a call has reached it. */
function heldCall() {
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  let entered!: () => void;
  const inHandler = new Promise<void>((r) => (entered = r));
  const slow = async () => {
    entered();
    await held;
    return Buffer.from('late');
  };
  return { slow, inHandler, release };
}

describe('our HTTP/2 server, frame by frame', () => {
  let server: GrpcH2Server | undefined;
  afterEach(async () => {
    await server?.close(100);
    server = undefined;
  });
  const start = async (slow?: (ctx: CallContext) => Promise<unknown>) => {
    server = createGrpcServer(echoMethods(slow), { maxMessageBytes: 64 << 20 });
    return server.listen('127.0.0.1', 0);
  };

  it('sends its SETTINGS and widens the connection window, acknowledges the client SETTINGS and answers PING', async () => {
    const c = await rawClient(await start());
    c.send(Buffer.concat([PREFACE, frame(4, 0, 0), frame(6, 0, 0, Buffer.from('12345678'))]));
    const settings = await c.frame(4);
    const values = new Map<number, number>();
    for (let i = 0; i < settings.payload.length; i += 6) values.set(settings.payload.readUInt16BE(i), settings.payload.readUInt32BE(i + 2));
    expect(Object.fromEntries(values)).toEqual({ 3: 1000, 4: 16 << 20, 5: 1 << 20, 6: 64 * 1024 });
    const update = await c.frame(8, 0);
    expect(update.payload.readUInt32BE(0)).toBe((64 << 20) - 65_535);
    const ping = await c.frame(6);
    expect([ping.flags, ping.payload.toString()]).toEqual([1, '12345678']);
    expect(c.frames.some((f) => f.type === 4 && f.flags === 1)).toBe(true);
    c.socket.destroy();
  });

  it('answers a request whose headers come in HEADERS + CONTINUATION, with padding', async () => {
    const c = await rawClient(await start());
    const block = encodeHeaders([[':method', 'POST'], [':scheme', 'http'], [':path', '/t.E/Echo'], [':authority', 'x'], ['content-type', 'application/grpc'], ['x-big', 'y'.repeat(3000)]]);
    const padded = Buffer.concat([Buffer.from([4]), block.subarray(0, 1000), Buffer.alloc(4)]);
    const body = frameMessage(Buffer.from('hi'));
    c.send(Buffer.concat([PREFACE, frame(4, 0, 0), frame(1, 0x8, 1, padded), frame(9, 0, 1, block.subarray(1000, 2000)), frame(9, 0x4, 1, block.subarray(2000)), frame(0, 0x1, 1, body)]));
    const [headers, trailers] = await c.frames_(1, 1, 2);
    const hpack = new HpackDecoder();
    expect([headers.flags, hpack.decode(headers.payload)]).toEqual([0x4, { ':status': '200', 'content-type': 'application/grpc', 'grpc-accept-encoding': 'identity,deflate,gzip' }]);
    expect([trailers.flags, hpack.decode(trailers.payload)]).toEqual([0x5, { 'grpc-status': '0' }]);
    const data = await c.frame(0, 1);
    expect(data.payload.equals(body)).toBe(true);
    c.socket.destroy();
  });

  it.each([
    ['a bad preface', () => Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'.padEnd(40, ' ')), undefined],
    ['a frame over SETTINGS_MAX_FRAME_SIZE', () => Buffer.concat([PREFACE, frame(0, 0, 1).subarray(0, 9).fill(0x20, 0, 1)]), H2Error.FRAME_SIZE_ERROR],
    ['DATA on stream 0', () => Buffer.concat([PREFACE, frame(0, 0, 0, Buffer.from('x'))]), H2Error.PROTOCOL_ERROR],
    ['a frame between HEADERS and its CONTINUATION', () => Buffer.concat([PREFACE, frame(1, 0, 1, encodeHeaders([[':method', 'POST']])), frame(6, 0, 0, Buffer.alloc(8))]), H2Error.PROTOCOL_ERROR],
    ['a broken HPACK block', () => Buffer.concat([PREFACE, frame(1, 0x4, 1, Buffer.from([0x80]))]), H2Error.COMPRESSION_ERROR],
    ['PUSH_PROMISE from the client', () => Buffer.concat([PREFACE, frame(5, 0x4, 1, Buffer.alloc(4))]), H2Error.PROTOCOL_ERROR],
  ])('ends the connection on %s (GOAWAY with the error code)', async (_what, bytes, code) => {
    const c = await rawClient(await start());
    c.send(bytes());
    await c.closed();
    const goaway = c.frames.find((f) => f.type === 7);
    if (code === undefined) expect(goaway).toBeUndefined();
    else expect(goaway?.payload.readUInt32BE(4)).toBe(code);
  });

  it('carries 20 MiB each way to a node:http2 client with its default 64 KiB windows (WINDOW_UPDATE both ways)', async () => {
    const port = await start();
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const body = Buffer.from(new Uint8Array(20 << 20).map((_, i) => (i * 7) & 0xff));
    const call = session.request({ ':method': 'POST', ':path': '/t.E/Echo', 'content-type': 'application/grpc' });
    const got: Buffer[] = [];
    let status: unknown;
    call.on('data', (d: Buffer) => got.push(d));
    call.on('trailers', (t) => (status = t['grpc-status']));
    call.end(frameMessage(body));
    await new Promise((r) => call.on('close', r));
    expect(status).toBe('0');
    expect(Buffer.concat(got).equals(frameMessage(body))).toBe(true);
    session.close();
  });

  it('closes gracefully under a node:http2 client: GOAWAY, then the call in flight still answers', async () => {
    const { slow, inHandler, release } = heldCall();
    const port = await start(slow);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const goaway = new Promise((r) => session.once('goaway', r));
    const call = session.request({ ':method': 'POST', ':path': '/t.E/Slow', 'content-type': 'application/grpc' });
    const got: Buffer[] = [];
    call.on('data', (d: Buffer) => got.push(d));
    call.end(frameMessage(Buffer.from('x')));
    await inHandler;
    const closing = server!.close(5_000);
    await goaway;
    release();
    await new Promise((r) => call.on('close', r));
    expect(Buffer.concat(got).subarray(5).toString()).toBe('late');
    await closing;
    server = undefined;
    session.destroy();
  });

  it('refuses a stream opened after its GOAWAY (REFUSED_STREAM) and closes once the call in flight is answered', async () => {
    const { slow, inHandler, release } = heldCall();
    const c = await rawClient(await start(slow));
    const request = (path: string) => encodeHeaders([[':method', 'POST'], [':scheme', 'http'], [':path', path], ['content-type', 'application/grpc']]);
    c.send(Buffer.concat([PREFACE, frame(4, 0, 0), frame(1, 0x4, 1, request('/t.E/Slow')), frame(0, 0x1, 1, frameMessage(Buffer.from('x')))]));
    await inHandler;
    const closing = server!.close(5_000);
    const goaway = await c.frame(7);
    expect([goaway.payload.readUInt32BE(0), goaway.payload.readUInt32BE(4)]).toEqual([1, H2Error.NO_ERROR]);
    c.send(Buffer.concat([frame(1, 0x4, 3, request('/t.E/Echo')), frame(0, 0x1, 3, frameMessage(Buffer.from('y')))]));
    const refused = await c.frame(3, 3);
    expect(refused.payload.readUInt32BE(0)).toBe(H2Error.REFUSED_STREAM);
    release();
    const data = await c.frame(0, 1);
    expect(data.payload.subarray(5).toString()).toBe('late');
    await c.closed();
    await closing;
    server = undefined;
  });

  it("tells a writer held back by the peer's window when its bytes are out ('drain')", async () => {
    const events: string[] = [];
    const h2 = createH2Server({ initialWindowSize: 1 << 20, maxFrameSize: 1 << 20, connectionWindowSize: 1 << 20, maxConcurrentStreams: 10, maxHeaderListSize: 1 << 16 }, (stream) => {
      stream.on('end', () => {
        stream.respond({ ':status': 200 });
        // 200 KiB against the client's 64 KiB stream window: held until it reads and updates.
        events.push(`write ${stream.write(Buffer.alloc(200 << 10, 1))}`);
        stream.on('drain', () => {
          events.push('drain');
          stream.end();
        });
      });
    });
    const port = await h2.listen('127.0.0.1', 0);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const call = session.request({ ':method': 'POST', ':path': '/x' });
    let bytes = 0;
    call.on('data', (d: Buffer) => (bytes += d.length));
    call.end();
    await new Promise((r) => call.on('close', r));
    expect(events).toEqual(['write false', 'drain']);
    expect(bytes).toBe(200 << 10);
    session.close();
    await h2.close(100);
  });
});
