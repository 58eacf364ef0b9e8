// Our HTTP/2 server at the frame level (a raw socket speaking HTTP/2), and with node:http2's client
// (nghttp2) for flow control and graceful close. The gRPC calls themselves are tested against
// grpc-js in grpc-h2.test.ts, and against tritonclient through the front door.
import { afterEach, describe, expect, it } from 'vitest';
import * as http2 from 'node:http2';
import * as net from 'node:net';
import { type CallContext, createGrpcServer, framed, frameMessage, type GrpcServer, H2_SETTINGS } from '../grpc-h2.js';
import { encodeHeaders, HpackDecoder } from './hpack.js';
import { connectH2, createH2Server, H2Error } from './server.js';

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

/** The frames in the bytes one end receives, whether its socket closed, and a way to wait for either. */
function frameCollector() {
  const frames: Frame[] = [];
  let buf = Buffer.alloc(0);
  let closed = false;
  const waiters: (() => void)[] = [];
  const wake = () => waiters.splice(0).forEach((w) => w());
  return {
    frames,
    get closed() {
      return closed;
    },
    push(d: Buffer) {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 9 && buf.length >= 9 + buf.readUIntBE(0, 3)) {
        const len = buf.readUIntBE(0, 3);
        frames.push({ type: buf[3], flags: buf[4], stream: buf.readUInt32BE(5), payload: buf.subarray(9, 9 + len) });
        buf = buf.subarray(9 + len);
      }
      wake();
    },
    close() {
      closed = true;
      wake();
    },
    async until(what: string, ok: () => boolean) {
      const deadline = Date.now() + 5_000;
      while (!ok()) {
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(frames.map((f) => [f.type, f.flags, f.stream, f.payload.length]))}`);
        await new Promise<void>((r) => {
          waiters.push(r);
          setTimeout(r, 50);
        });
      }
    },
  };
}

/** A raw HTTP/2 client: sends bytes, collects the frames the server sends, and whether it closed. */
async function rawClient(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  const got = frameCollector();
  const { frames } = got;
  socket.on('data', (d) => got.push(d));
  socket.on('error', () => undefined);
  socket.on('close', () => got.close());
  const until = (what: string, ok: () => boolean) => got.until(what, ok);
  return {
    socket,
    frames,
    send: (b: Buffer) => socket.write(b),
    frame: (type: number, stream?: number) => until(`frame type ${type}`, () => frames.some((f) => f.type === type && (stream === undefined || f.stream === stream))).then(() => frames.find((f) => f.type === type && (stream === undefined || f.stream === stream))!),
    /** Every frame of `type` on `stream`, once there are `n`. */
    frames_: (type: number, stream: number, n: number) => until(`${n} frames of type ${type}`, () => frames.filter((f) => f.type === type && f.stream === stream).length >= n).then(() => frames.filter((f) => f.type === type && f.stream === stream)),
    closed: () => until('the server to close the connection', () => got.closed),
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
  let server: GrpcServer | undefined;
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

  it('hands a large gRPC message over 8-byte aligned when its DATA frame came in several reads (the stage codec aligns tensors within a message)', async () => {
    const seen: { offset: number; body: Buffer }[] = [];
    server = createGrpcServer({
      '/t.E/Echo': { kind: 'unary' as const, decode: (b: Buffer) => (seen.push({ offset: b.byteOffset, body: Buffer.from(b) }), b), encodeFramed: framed, handle: (m: Buffer) => m.subarray(0, 4) },
    }, { maxMessageBytes: 64 << 20 });
    const c = await rawClient(await server.listen('127.0.0.1', 0));
    const block = encodeHeaders([[':method', 'POST'], [':scheme', 'http'], [':path', '/t.E/Echo'], [':authority', 'x'], ['content-type', 'application/grpc']]);
    const message = Buffer.from(Array.from({ length: 100_003 }, (_, i) => (i * 7) % 251));
    const data = frame(0, 0x1, 1, frameMessage(message));
    c.send(Buffer.concat([PREFACE, frame(4, 0, 0), frame(1, 0x4, 1, block)]));
    // The DATA frame in three writes, apart in time: the server reads it in pieces and joins them.
    for (const [a, z] of [[0, 30_000], [30_000, 70_001], [70_001, data.length]]) {
      c.send(data.subarray(a, z));
      await new Promise((r) => setTimeout(r, 20));
    }
    await c.frames_(1, 1, 2);
    expect(seen).toHaveLength(1);
    expect(seen[0].body.equals(message)).toBe(true);
    expect(seen[0].offset % 8).toBe(0);
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

/** A raw HTTP/2 server: accepts one connection, checks the client preface, collects its frames. */
async function rawServer() {
  const got = frameCollector();
  const { frames } = got;
  let socket: net.Socket | undefined;
  let preface: boolean | undefined;
  let head = Buffer.alloc(0);
  const server = net.createServer((s) => {
    socket = s;
    s.on('data', (d: Buffer) => {
      if (preface !== undefined) return got.push(d);
      head = Buffer.concat([head, d]);
      if (head.length < PREFACE.length) return;
      preface = head.subarray(0, PREFACE.length).equals(PREFACE);
      if (preface) got.push(head.subarray(PREFACE.length));
    });
    s.on('error', () => undefined);
    s.on('close', () => got.close());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const matching = (type: number, flags?: number) => frames.filter((f) => f.type === type && (flags === undefined || (f.flags & flags) === flags));
  return {
    port: (server.address() as net.AddressInfo).port,
    frames,
    preface: () => preface,
    send: (b: Buffer) => socket!.write(b),
    /** Every frame of `type` (with `flags` set), once there are `n`. */
    framesOf: (type: number, n: number, flags?: number) => got.until(`${n} frames of type ${type}`, () => matching(type, flags).length >= n).then(() => matching(type, flags)),
    closed: () => got.until('the client to close the connection', () => got.closed),
    close: () => {
      socket?.destroy();
      server.close();
    },
  };
}

describe('our HTTP/2 client (the stage links), frame by frame against a raw server', () => {
  const settingsOf = (p: Buffer) => Object.fromEntries(Array.from({ length: p.length / 6 }, (_, i) => [p.readUInt16BE(i * 6), p.readUInt32BE(i * 6 + 2)]));
  const request = { ':method': 'POST', ':scheme': 'http', ':authority': 'peer:7000', ':path': '/t.E/Chat', 'content-type': 'application/grpc', te: 'trailers' };

  it('opens with the preface and its SETTINGS, keeps to the peer\'s frame size and windows, and takes a response, data, PING, trailers and GOAWAY', async () => {
    const srv = await rawServer();
    const goaways: number[] = [];
    const conn = connectH2('127.0.0.1', srv.port, H2_SETTINGS, { onGoaway: (code) => goaways.push(code) });
    await new Promise((r) => conn.socket.once('connect', r));
    const st = conn.request(request);
    const events: unknown[] = [];
    st.on('response', (h) => events.push(['response', h[':status'], h['content-type']]));
    st.on('data', (d: Buffer) => events.push(['data', d.toString()]));
    st.on('trailers', (t) => events.push(['trailers', t['grpc-status']]));
    st.on('end', () => events.push(['end']));
    // Before the server's SETTINGS: HTTP/2's default 16 KiB frames.
    st.write(Buffer.alloc(40_000, 1));

    const [settings] = await srv.framesOf(4, 1);
    expect(srv.preface()).toBe(true);
    expect(settings.stream).toBe(0);
    expect(settingsOf(settings.payload)).toEqual({ 2: 0, 4: 16 << 20, 5: 1 << 20, 6: 64 << 10 });
    const [update] = await srv.framesOf(8, 1);
    expect([update.stream, update.payload.readUInt32BE(0)]).toEqual([0, (64 << 20) - 65_535]);
    const [headers] = await srv.framesOf(1, 1);
    expect(headers.stream).toBe(1);
    expect(headers.flags & 0x1).toBe(0); // the request body follows: no END_STREAM
    expect(new HpackDecoder(4096, 1 << 16).decode(headers.payload)).toEqual({ ':method': 'POST', ':scheme': 'http', ':authority': 'peer:7000', ':path': '/t.E/Chat', 'content-type': 'application/grpc', te: 'trailers' });
    expect((await srv.framesOf(0, 3)).map((f) => [f.stream, f.payload.length])).toEqual([[1, 16_384], [1, 16_384], [1, 7_232]]);

    // The server allows 1 MiB frames and opens the windows: a message written in pieces (prefix, body) now leaves as one frame.
    const maxFrame = Buffer.alloc(6);
    maxFrame.writeUInt16BE(5, 0);
    maxFrame.writeUInt32BE(1 << 20, 2);
    const inc = Buffer.alloc(4);
    inc.writeUInt32BE(1 << 20);
    srv.send(Buffer.concat([frame(4, 0, 0, maxFrame), frame(8, 0, 0, inc), frame(8, 0, 1, inc)]));
    expect((await srv.framesOf(4, 1, 0x1))[0].payload.length).toBe(0); // our ack of its SETTINGS
    st.writeParts([Buffer.alloc(5, 9), Buffer.alloc(65_536, 2)]);
    const data = await srv.framesOf(0, 4);
    expect(data.map((f) => f.payload.length)).toEqual([16_384, 16_384, 7_232, 65_541]);
    expect(data[3].payload.equals(Buffer.concat([Buffer.alloc(5, 9), Buffer.alloc(65_536, 2)]))).toBe(true);

    // The response: headers, a message, a PING from the server (answered), ours (acknowledged), trailers.
    srv.send(Buffer.concat([
      frame(1, 0x4, 1, encodeHeaders([[':status', '200'], ['content-type', 'application/grpc']])),
      frame(0, 0, 1, Buffer.from('hello')),
      frame(6, 0, 0, Buffer.from('pingpong')),
    ]));
    const [pong] = await srv.framesOf(6, 1, 0x1);
    expect(pong.payload.toString()).toBe('pingpong');
    let acked = false;
    conn.ping(() => (acked = true));
    const ours = (await srv.framesOf(6, 2)).find((f) => !(f.flags & 0x1))!;
    srv.send(frame(6, 0x1, 0, ours.payload));
    const ended = new Promise<void>((r) => st.once('end', r));
    srv.send(frame(1, 0x4 | 0x1, 1, encodeHeaders([['grpc-status', '0']])));
    await ended;
    expect(acked).toBe(true);
    expect(events).toEqual([['response', '200', 'application/grpc'], ['data', 'hello'], ['trailers', '0'], ['end']]);

    // GOAWAY: heard, and no new stream may open.
    const goaway = Buffer.alloc(8);
    srv.send(frame(7, 0, 0, goaway));
    for (let i = 0; i < 100 && goaways.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(goaways).toEqual([0]);
    expect(() => conn.request(request)).toThrow('the connection is closed or going away');
    conn.destroy();
    srv.close();
  });

  it('ends the connection with GOAWAY PROTOCOL_ERROR on a PUSH_PROMISE (it sent SETTINGS_ENABLE_PUSH 0)', async () => {
    const srv = await rawServer();
    const conn = connectH2('127.0.0.1', srv.port, H2_SETTINGS);
    await new Promise((r) => conn.socket.once('connect', r));
    conn.request(request);
    await srv.framesOf(1, 1);
    srv.send(frame(5, 0x4, 1, Buffer.concat([Buffer.from([0, 0, 0, 2]), encodeHeaders([[':method', 'GET'], [':path', '/pushed']])])));
    const [goaway] = await srv.framesOf(7, 1);
    expect([goaway.payload.readUInt32BE(0), goaway.payload.readUInt32BE(4), goaway.payload.subarray(8).toString()]).toEqual([0, H2Error.PROTOCOL_ERROR, 'PUSH_PROMISE, though we sent SETTINGS_ENABLE_PUSH 0']);
    await srv.closed();
    srv.close();
  });
});
