import { credentials, makeGenericClientConstructor, Metadata, status as grpcStatus, type ServiceError } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { deflateSync, gzipSync } from 'node:zlib';
import { type CallContext, createGrpcServer, deadlineOf, frameMessage, framed, GrpcStatus, GrpcWireError, MessageReader, type GrpcServer, type ServerStreamCall } from './grpc-h2.js';
import { FORWARD_PATH, splitAddress, StageLink } from './pipeline/stage-link.js';
import { decodeStageMessage, frameStageReply } from './pipeline/codec.js';
import { encodeHeaders } from './h2/hpack.js';

const id = (b: Buffer) => b;
const defs = {
  Echo: { path: '/t.E/Echo', requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id },
  Slow: { path: '/t.E/Slow', requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id },
  Ticks: { path: '/t.E/Ticks', requestStream: false, responseStream: true, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id },
  Nope: { path: '/t.E/Nope', requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id },
  Chat: { path: '/t.E/Chat', requestStream: true, responseStream: true, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id },
};

describe('MessageReader', () => {
  const stream = Buffer.concat([frameMessage(Buffer.from('first')), frameMessage(Buffer.alloc(0)), frameMessage(Buffer.alloc(70_000, 7))]);

  it('yields the exact messages however the stream is split into chunks', () => {
    for (const size of [1, 2, 5, 6, 13, 4096, 70_005, stream.length]) {
      const got: Buffer[] = [];
      const r = new MessageReader(1 << 20, (b) => got.push(Buffer.from(b)));
      for (let at = 0; at < stream.length; at += size) r.push(stream.subarray(at, at + size));
      expect(got.map((b) => b.length)).toEqual([5, 0, 70_000]);
      expect(got[0].toString()).toBe('first');
      expect(got[2].equals(Buffer.alloc(70_000, 7))).toBe(true);
    }
  });

  it('inflates gzip and deflate messages; refuses the rest, and messages over the limit, with their gRPC codes', () => {
    const compressed = (body: Buffer) => {
      const f = frameMessage(body);
      f[0] = 1;
      return f;
    };
    const read = (frame: Buffer, encoding?: string, max = 100) => {
      const got: string[] = [];
      new MessageReader(max, (b) => got.push(b.toString()), encoding).push(frame);
      return got;
    };
    const wireError = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(GrpcWireError);
        return { code: (e as GrpcWireError).code, message: (e as Error).message };
      }
      throw new Error('no error thrown');
    };
    expect(read(compressed(gzipSync('hello')), 'gzip')).toEqual(['hello']);
    expect(read(compressed(deflateSync('hello')), 'deflate')).toEqual(['hello']);
    expect(wireError(() => read(compressed(Buffer.from('x'))))).toEqual({ code: GrpcStatus.INTERNAL, message: 'a message is marked compressed but the call has no grpc-encoding' });
    expect(wireError(() => read(compressed(Buffer.from('x')), 'snappy'))).toEqual({ code: GrpcStatus.UNIMPLEMENTED, message: "grpc-encoding 'snappy' is not supported (identity,deflate,gzip)" });
    expect(wireError(() => read(compressed(Buffer.from('not gzip')), 'gzip')).code).toBe(GrpcStatus.INTERNAL);
    // A small message that inflates past the limit is refused without inflating all of it.
    expect(wireError(() => read(compressed(gzipSync(Buffer.alloc(10_000))), 'gzip'))).toEqual({ code: GrpcStatus.RESOURCE_EXHAUSTED, message: 'message inflates to over the limit of 100 bytes' });
    expect(wireError(() => new MessageReader(100, () => undefined).push(frameMessage(Buffer.alloc(101)).subarray(0, 5)))).toEqual({ code: GrpcStatus.RESOURCE_EXHAUSTED, message: 'message of 101 bytes is over the limit of 100' });
  });
});

describe('deadlineOf (grpc-timeout)', () => {
  it('reads every unit and ignores malformed values', () => {
    expect([deadlineOf('2H', 0), deadlineOf('3M', 0), deadlineOf('5S', 0), deadlineOf('250m', 0), deadlineOf('1500u', 0), deadlineOf('2000000n', 0)]).toEqual([7_200_000, 180_000, 5_000, 250, 1.5, 2]);
    expect([deadlineOf(undefined), deadlineOf('5'), deadlineOf('123456789S'), deadlineOf('-1S'), deadlineOf('5s')]).toEqual([undefined, undefined, undefined, undefined, undefined]);
  });
});

describe('gRPC on our own HTTP/2 (h2/server.ts) against grpc-js (a real gRPC client)', () => {
  let server: GrpcServer | undefined;
  afterEach(async () => {
    await server?.close(100);
    server = undefined;
  });

  let slowCalls: CallContext[] = [];
  let ticksCancelled!: () => void;
  const ticksGone = new Promise<void>((r) => (ticksCancelled = r));

  async function start(onChat?: (call: ServerStreamCall<any, any>) => void): Promise<number> {
    server = createGrpcServer({
      '/t.E/Echo': { kind: 'unary', decode: id, encodeFramed: (m: Buffer) => frameMessage(Buffer.concat([Buffer.from('echo:'), m])), handle: async (m: Buffer) => {
        if (m.toString() === 'missing') throw new GrpcWireError(GrpcStatus.NOT_FOUND, "model 'missing' is not served here (100%)");
        if (m.toString() === 'crash') throw new TypeError('boom');
        return m;
      } },
      '/t.E/Slow': { kind: 'unary', decode: id, encodeFramed: frameMessage, handle: (_m: Buffer, ctx: CallContext) => {
        slowCalls.push(ctx);
        return new Promise(() => undefined);
      } },
      '/t.E/Ticks': { kind: 'serverStream', decode: id, encodeFramed: frameMessage, open: (m: Buffer, call) => {
        for (let i = 0; i < Number(m.toString()); i++) call.write(Buffer.from(`tick ${i}`));
        call.on('cancelled', () => ticksCancelled());
      } },
      '/t.E/Chat': { kind: 'bidi', decode: id, encodeFramed: frameMessage, open: (call) => {
        call.on('data', (m: Buffer) => call.write(Buffer.from(m.toString().toUpperCase())));
        // A test that watches the call keeps it open past the client's half-close (grpc-js's cancel
        // half-closes, then resets: ended at once here, the call could finish before the reset).
        if (onChat) onChat(call);
        else call.on('end', () => call.end());
      } },
    }, { maxMessageBytes: 1024 });
    return server.listen('127.0.0.1', 0);
  }

  it('answers unary calls, refuses unknown methods and oversized messages with the gRPC codes', async () => {
    const port = await start();
    const client = new (makeGenericClientConstructor(defs, 'E'))(`127.0.0.1:${port}`, credentials.createInsecure()) as any;
    const call = (method: string, body: Buffer) => new Promise<Buffer>((resolve, reject) => client[method](body, new Metadata(), { deadline: Date.now() + 5_000 }, (e: ServiceError | null, r: Buffer) => (e ? reject(e) : resolve(r))));
    expect((await call('Echo', Buffer.from('hi'))).toString()).toBe('echo:hi');
    await expect(call('Echo', Buffer.from('missing'))).rejects.toMatchObject({ code: grpcStatus.NOT_FOUND, details: "model 'missing' is not served here (100%)" });
    await expect(call('Echo', Buffer.from('crash'))).rejects.toMatchObject({ code: grpcStatus.INTERNAL, details: 'boom' });
    await expect(call('Nope', Buffer.from('hi'))).rejects.toMatchObject({ code: grpcStatus.UNIMPLEMENTED, details: 'unknown method /t.E/Nope' });
    await expect(call('Echo', Buffer.alloc(2000))).rejects.toMatchObject({ code: grpcStatus.RESOURCE_EXHAUSTED, details: 'message of 2000 bytes is over the limit of 1024' });
    client.close();
  });

  it('takes gzip-compressed requests from a grpc-js client that compresses', async () => {
    const port = await start();
    const client = new (makeGenericClientConstructor(defs, 'E'))(`127.0.0.1:${port}`, credentials.createInsecure(), { 'grpc.default_compression_algorithm': 2 }) as any;
    const reply = await new Promise<Buffer>((resolve, reject) => client.Echo(Buffer.alloc(50, 'z'), (e: ServiceError | null, r: Buffer) => (e ? reject(e) : resolve(r))));
    expect(reply.toString()).toBe('echo:' + 'z'.repeat(50));
    client.close();
  });

  it('carries messages of many MiB both ways in a unary call', async () => {
    // framed(): a body this large goes out as prefix + body, without a copy.
    server = createGrpcServer({ '/t.E/Echo': { kind: 'unary', decode: id, encodeFramed: framed, handle: (m: Buffer) => m } }, { maxMessageBytes: 64 << 20 });
    const port = await server.listen('127.0.0.1', 0);
    const client = new (makeGenericClientConstructor(defs, 'E'))(`127.0.0.1:${port}`, credentials.createInsecure(), { 'grpc.max_send_message_length': -1, 'grpc.max_receive_message_length': -1 }) as any;
    const body = Buffer.from(new Uint8Array(24 << 20).map((_, i) => (i * 13) & 0xff));
    const reply = await new Promise<Buffer>((resolve, reject) => client.Echo(body, (e: ServiceError | null, r: Buffer) => (e ? reject(e) : resolve(r))));
    expect(reply.equals(body)).toBe(true);
    client.close();
  });

  it('hands the handler the client deadline, and aborts its signal when the client gives up', async () => {
    slowCalls = [];
    const port = await start();
    const client = new (makeGenericClientConstructor(defs, 'E'))(`127.0.0.1:${port}`, credentials.createInsecure()) as any;
    const t0 = Date.now();
    const err = await new Promise<ServiceError>((resolve) => client.Slow(Buffer.from('x'), new Metadata(), { deadline: t0 + 300 }, (e: ServiceError) => resolve(e)));
    expect(err.code).toBe(grpcStatus.DEADLINE_EXCEEDED);
    expect(slowCalls).toHaveLength(1);
    // The client's 300 ms, counted from when the request reached the server: a little later than t0 + 300
    // on a busy machine (transit time), and not the server's own default.
    expect(slowCalls[0].deadline).toBeGreaterThan(t0 + 200);
    expect(slowCalls[0].deadline).toBeLessThan(t0 + 1_000);
    for (let i = 0; i < 50 && !slowCalls[0].signal.aborted; i++) await new Promise((r) => setTimeout(r, 20));
    expect(slowCalls[0].signal.aborted).toBe(true);
    client.close();
  });

  it('streams replies to one request, and tells the handler when the client cancels', async () => {
    const port = await start();
    const client = new (makeGenericClientConstructor(defs, 'E'))(`127.0.0.1:${port}`, credentials.createInsecure()) as any;
    const ticks = client.Ticks(Buffer.from('3'));
    ticks.on('error', () => undefined);
    const got: string[] = [];
    await new Promise<void>((r) => ticks.on('data', (m: Buffer) => got.push(m.toString()) === 3 && r()));
    expect(got).toEqual(['tick 0', 'tick 1', 'tick 2']);
    ticks.cancel();
    await ticksGone;
    client.close();
  });

  it('streams both ways in order, and tells the handler when the client cancels', async () => {
    let cancelled!: () => void;
    const wasCancelled = new Promise<void>((r) => (cancelled = r));
    const port = await start((call) => call.on('cancelled', () => cancelled()));
    const client = new (makeGenericClientConstructor(defs, 'E'))(`127.0.0.1:${port}`, credentials.createInsecure()) as any;
    const chat = client.Chat();
    chat.on('error', () => undefined);
    const replies: string[] = [];
    const three = new Promise<void>((r) => chat.on('data', (m: Buffer) => replies.push(m.toString()) === 3 && r()));
    for (const w of ['a', 'bb', 'ccc']) chat.write(Buffer.from(w));
    await three;
    expect(replies).toEqual(['A', 'BB', 'CCC']);
    chat.cancel();
    await wasCancelled;
    client.close();
  });
});

describe('StageLink addresses', () => {
  it('takes host:port, a bracketed IPv6 host, and a rank DNS name; refuses the rest at construction', () => {
    expect(['10.0.0.7:7000', '[::1]:7000', 'net-1.net.default.svc:7000'].map(splitAddress)).toEqual([{ host: '10.0.0.7', port: 7000 }, { host: '::1', port: 7000 }, { host: 'net-1.net.default.svc', port: 7000 }]);
    for (const bad of ['net-1', ':7000', 'net-1:', 'net-1:0', 'net-1:65536', 'net-1:70x0', 'net-1:-1']) {
      expect(() => new StageLink({ address: bad, toStage: 1 }), bad).toThrow(`stage ${bad}: the next stage's address must be host:port`);
    }
  });
});

describe('StageLink on the rank transport', () => {
  const tensor = { name: 'a', datatype: 'FP32' as const, shape: [2], data: new Uint8Array(new Float32Array([1, 2]).buffer) };

  /** A started StageLink to `port`, once connected; `connected()` resolves at its next connection. */
  async function startLink(port: number): Promise<{ link: StageLink; connected: () => Promise<void> }> {
    const link = new StageLink({ address: `127.0.0.1:${port}`, toStage: 1 });
    const connected = () => new Promise<void>((r) => link.once('connected', () => r()));
    const up = connected();
    link.start();
    await up;
    return { link, connected };
  }

  it('carries large activations both ways with many requests in flight on the one stream, on one connection', async () => {
    // An echo: requests and replies of several MiB cross on the stream at the same time (flow control
    // both ways; node:http2 stalled here with wide windows at both ends, our client never stops reading).
    const server = createGrpcServer({
      [FORWARD_PATH]: { kind: 'bidi', decode: decodeStageMessage, encodeFramed: frameStageReply, open: (call) => {
        call.on('data', (m: any) => call.write({ id: m.id, outputs: m.request.tensors, timings: [] }));
      } },
    }, { maxMessageBytes: 1 << 30 });
    let connections = 0;
    server.server.on('connection', () => connections++);
    const port = await server.listen('127.0.0.1', 0);
    const { link } = await startLink(port);
    for (const [mib, count] of [[16, 2], [2, 40]]) {
      const tensors = Array.from({ length: count }, (_, k) => ({ name: `a${k}`, datatype: 'UINT8' as const, shape: [mib << 20], data: new Uint8Array(mib << 20).map((_, i) => (i + k) & 0xff) }));
      const replies = await Promise.all(tensors.map((t) => link.send([t], [], Date.now() + 20_000)));
      replies.forEach((r, k) => {
        expect(r.outputs[0].name).toBe(`a${k}`);
        expect(Buffer.from(r.outputs[0].data).equals(Buffer.from(tensors[k].data))).toBe(true);
      });
    }
    expect(connections).toBe(1);
    link.close();
    await server.close(100);
  });

  it('fails every request in flight with Unavailable at once when the peer goes away, then reconnects', async () => {
    let held: Array<() => void> = [];
    const make = () => createGrpcServer({
      [FORWARD_PATH]: { kind: 'bidi', decode: decodeStageMessage, encodeFramed: frameStageReply, open: (call) => {
        call.on('data', (m: any) => held.push(() => call.write({ id: m.id, outputs: m.request.tensors, timings: [] })));
      } },
    }, { maxMessageBytes: 1 << 20 });
    const first = make();
    const port = await first.listen('127.0.0.1', 0);
    const { link, connected } = await startLink(port);
    let up: Promise<void>;
    // One answered request, then two held by the peer when it dies.
    const answered = link.send([tensor], [], Date.now() + 5_000);
    await new Promise((r) => setTimeout(r, 50));
    held.shift()!();
    expect(Buffer.from((await answered).outputs[0].data)).toEqual(Buffer.from(tensor.data));
    const t0 = Date.now();
    // Outcomes captured at once: the rejections arrive while the test awaits the close.
    const inflight = [link.send([tensor], [], Date.now() + 30_000), link.send([tensor], [], Date.now() + 30_000)].map((p) => p.then(() => 'answered', (e: unknown) => e));
    await new Promise((r) => setTimeout(r, 50));
    expect(link.inflight).toBe(2);
    await first.close(0);
    for (const p of inflight) expect(await p).toMatchObject({ kind: 'Unavailable', message: expect.stringMatching(new RegExp(`^stage 1 at 127\\.0\\.0\\.1:${port} is unreachable: `)) });
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(link.connected).toBe(false);
    // The peer comes back on the same port: the link reconnects by itself and serves again.
    held = [];
    const second = make();
    up = connected();
    await second.listen('127.0.0.1', port);
    await up;
    const again = link.send([tensor], [], Date.now() + 5_000);
    await new Promise((r) => setTimeout(r, 50));
    held.shift()!();
    expect((await again).outputs[0].shape).toEqual([2]);
    link.close();
    await second.close(100);
  });

  it('when the connection breaks, cancels the call on the server, fails the link\'s requests at once, and reconnects', async () => {
    const held: Array<() => void> = [];
    let cancelled = 0;
    const server = createGrpcServer({
      [FORWARD_PATH]: { kind: 'bidi', decode: decodeStageMessage, encodeFramed: frameStageReply, open: (call) => {
        call.on('data', (m: any) => held.push(() => call.write({ id: m.id, outputs: m.request.tensors, timings: [] })));
        call.on('cancelled', () => cancelled++);
      } },
    }, { maxMessageBytes: 1 << 20 });
    const sockets: Socket[] = [];
    server.server.on('connection', (socket: Socket) => sockets.push(socket));
    const port = await server.listen('127.0.0.1', 0);
    const { link, connected } = await startLink(port);
    let up: Promise<void>;
    const inflight = link.send([tensor], [], Date.now() + 30_000).then(() => 'answered', (e: unknown) => e);
    for (let i = 0; i < 100 && held.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(held).toHaveLength(1);
    up = connected();
    const t0 = Date.now();
    sockets[0].destroy(); // the connection drops
    expect(await inflight).toMatchObject({ kind: 'Unavailable', message: expect.stringMatching(new RegExp(`^stage 1 at 127\\.0\\.0\\.1:${port} is unreachable: `)) });
    expect(Date.now() - t0).toBeLessThan(5_000);
    for (let i = 0; i < 100 && cancelled === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(cancelled).toBe(1);
    held[0](); // a late answer to a call that is gone goes nowhere and breaks nothing
    await up;
    expect(sockets).toHaveLength(2);
    const again = link.send([tensor], [], Date.now() + 5_000);
    for (let i = 0; i < 100 && held.length === 1; i++) await new Promise((r) => setTimeout(r, 10));
    held[1]();
    expect((await again).outputs[0].shape).toEqual([2]);
    link.close();
    await server.close(100);
  });

  /** A TCP server that takes connections and, with `answer`, answers the first call's headers and nothing more (no PING acks). */
  async function mutePeer(answer: boolean) {
    const sockets: Socket[] = [];
    const server = createNetServer((socket) => {
      sockets.push(socket);
      socket.on('error', () => undefined);
      let seen = Buffer.alloc(0);
      socket.on('data', (d: Buffer) => {
        seen = Buffer.concat([seen, d]);
        // Past the 24-byte preface, the client's HEADERS frame (type 1) on stream 1: answer 200.
        if (!answer || seen.length < 24 + 9) return;
        for (let at = 24; at + 9 <= seen.length; at += 9 + seen.readUIntBE(at, 3)) {
          if (seen[at + 3] !== 1) continue;
          const block = encodeHeaders([[':status', '200'], ['content-type', 'application/grpc']]);
          const head = Buffer.alloc(9);
          head.writeUIntBE(block.length, 0, 3);
          head[3] = 1;
          head[4] = 0x4;
          head.writeUInt32BE(1, 5);
          socket.write(Buffer.concat([Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]), head, block]));
          answer = false; // the first connection only: the ones after it stay mute
          break;
        }
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { port: (server.address() as AddressInfo).port, sockets, close: () => { sockets.forEach((s) => s.destroy()); server.close(); } };
  }

  it('does not connect to a peer that takes the TCP connection but never answers the call: requests fail at once, and it keeps retrying', async () => {
    const peer = await mutePeer(false);
    const link = new StageLink({ address: `127.0.0.1:${peer.port}`, toStage: 1, connectTimeoutMs: 150 });
    link.start();
    for (let i = 0; i < 200 && peer.sockets.length < 3; i++) await new Promise((r) => setTimeout(r, 10));
    expect(peer.sockets.length).toBeGreaterThanOrEqual(3); // given up after 150 ms each time, then tried again
    expect(link.connected).toBe(false);
    const t0 = Date.now();
    await expect(link.send([tensor], [], Date.now() + 30_000)).rejects.toMatchObject({ kind: 'Unavailable', message: `stage 1 at 127.0.0.1:${peer.port} is not connected` });
    expect(Date.now() - t0).toBeLessThan(100);
    link.close();
    peer.close();
  });

  it('counts a link whose PINGs go unanswered as broken: its requests fail with Unavailable, and it reconnects', async () => {
    const peer = await mutePeer(true);
    const link = new StageLink({ address: `127.0.0.1:${peer.port}`, toStage: 1, keepaliveMs: 100, keepaliveTimeoutMs: 150 });
    const up = new Promise<void>((r) => link.once('connected', () => r()));
    link.start();
    await up;
    const t0 = Date.now();
    // The peer never answers this request, nor the PING that follows within 100 ms.
    await expect(link.send([tensor], [], Date.now() + 30_000)).rejects.toMatchObject({ kind: 'Unavailable', message: `stage 1 at 127.0.0.1:${peer.port} is unreachable: no ping answer within 150 ms` });
    expect(Date.now() - t0).toBeLessThan(2_000);
    for (let i = 0; i < 200 && peer.sockets.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    expect(peer.sockets.length).toBeGreaterThanOrEqual(2);
    link.close();
    peer.close();
  });
});
