import { credentials, makeGenericClientConstructor, Metadata, status as grpcStatus, type ServiceError } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { createGrpcH2Server, frameMessage, GrpcStatus, GrpcWireError, MessageReader, type GrpcH2Server, type ServerStreamCall } from './grpc-h2.js';
import { FORWARD_PATH, StageLink } from './stage-link.js';
import { decodeStageMessage, encodeStageReply } from './codec.js';

const id = (b: Buffer) => b;
const defs = {
  Echo: { path: '/t.E/Echo', requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id },
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

  it('refuses compressed messages and messages over the limit with their gRPC codes', () => {
    const compressed = frameMessage(Buffer.from('x'));
    compressed[0] = 1;
    expect(() => new MessageReader(100, () => undefined).push(compressed)).toThrow(new GrpcWireError(GrpcStatus.UNIMPLEMENTED, 'compressed messages are not supported on the rank port'));
    const big = frameMessage(Buffer.alloc(101));
    let err: unknown;
    try {
      new MessageReader(100, () => undefined).push(big.subarray(0, 5));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(GrpcWireError);
    expect((err as GrpcWireError).code).toBe(GrpcStatus.RESOURCE_EXHAUSTED);
    expect((err as Error).message).toBe('message of 101 bytes is over the limit of 100');
  });
});

describe('gRPC on node:http2 against grpc-js (a real gRPC client)', () => {
  let server: GrpcH2Server | undefined;
  afterEach(async () => {
    await server?.close(100);
    server = undefined;
  });

  async function start(onChat?: (call: ServerStreamCall<any, any>) => void): Promise<number> {
    server = createGrpcH2Server({
      '/t.E/Echo': { kind: 'unary', decode: id, encodeFramed: (m: Buffer) => frameMessage(Buffer.concat([Buffer.from('echo:'), m])), handle: (m: Buffer) => m },
      '/t.E/Chat': { kind: 'bidi', decode: id, encodeFramed: frameMessage, open: (call) => {
        call.on('data', (m: Buffer) => call.write(Buffer.from(m.toString().toUpperCase())));
        call.on('end', () => call.end());
        onChat?.(call);
      } },
    }, { maxMessageBytes: 1024 });
    return server.listen('127.0.0.1', 0);
  }

  it('answers unary calls, refuses unknown methods and oversized messages with the gRPC codes', async () => {
    const port = await start();
    const client = new (makeGenericClientConstructor(defs, 'E'))(`127.0.0.1:${port}`, credentials.createInsecure()) as any;
    const call = (method: string, body: Buffer) => new Promise<Buffer>((resolve, reject) => client[method](body, new Metadata(), { deadline: Date.now() + 5_000 }, (e: ServiceError | null, r: Buffer) => (e ? reject(e) : resolve(r))));
    expect((await call('Echo', Buffer.from('hi'))).toString()).toBe('echo:hi');
    await expect(call('Nope', Buffer.from('hi'))).rejects.toMatchObject({ code: grpcStatus.UNIMPLEMENTED, details: 'unknown method /t.E/Nope' });
    await expect(call('Echo', Buffer.alloc(2000))).rejects.toMatchObject({ code: grpcStatus.RESOURCE_EXHAUSTED, details: 'message of 2000 bytes is over the limit of 1024' });
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

describe('StageLink on the rank transport', () => {
  it('fails every request in flight with Unavailable at once when the peer goes away, then reconnects', async () => {
    let held: Array<() => void> = [];
    const make = () => createGrpcH2Server({
      [FORWARD_PATH]: { kind: 'bidi', decode: decodeStageMessage, encodeFramed: (m) => encodeStageReply(m, true), open: (call) => {
        call.on('data', (m: any) => held.push(() => call.write({ id: m.id, outputs: m.request.tensors, timings: [] })));
      } },
    }, { maxMessageBytes: 1 << 20 });
    const first = make();
    const port = await first.listen('127.0.0.1', 0);
    const link = new StageLink({ address: `127.0.0.1:${port}`, toStage: 1 });
    const connected = () => new Promise<void>((r) => link.once('connected', () => r()));
    let up = connected();
    link.start();
    await up;
    const tensor = { name: 'a', datatype: 'FP32' as const, shape: [2], data: new Uint8Array(new Float32Array([1, 2]).buffer) };
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
});
