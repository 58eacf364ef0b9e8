// npm run bench:serve — latency and throughput of shardserve's pipeline against single-process
// onnxruntime and against KServe's Python model server on the same ONNX. Loopback only, bounded
// request counts. Writes bench/results/serve.json and prints a summary.
//
//   SHARDSERVE_BENCH_QUICK=1   fewer requests (a smoke run)
import { Server, ServerCredentials, credentials, type ServerDuplexStream, type ServerUnaryCall, type sendUnaryData } from '@grpc/grpc-js';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { Agent as HttpAgent, request as httpRequest } from 'node:http';
import * as http2 from 'node:http2';
import { connect, createServer as createNetServer, type AddressInfo } from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as ort from 'onnxruntime-node';
import { buildStageModel } from '../core/onnx/bind.js';
import { GraphBuilder, seededFloats } from '../core/onnx/graph-builder.js';
import { planPipeline } from '../core/onnx/partition.js';
import { mlpNetwork, type SampleNetwork } from '../core/onnx/sample-networks.js';
import { LocalGroup } from '../runtime-image/local-group.js';
import { loadCheckpointStage } from '../runtime-image/load-stage.js';
import { startRank } from '../runtime-image/rank.js';
import { sessionOptions } from '../runtime-image/pipeline/stage-session.js';
import { freePort, freePortRange } from '../runtime-image/ports.js';
import { NO_CHANNELZ, services } from '../runtime-image/protos.js';
import { decodeStageMessage, frameStageReply } from '../runtime-image/pipeline/codec.js';
import { createGrpcServer, frameMessage, type MethodHandler } from '../runtime-image/grpc-h2.js';
import { FORWARD_PATH, StageLink } from '../runtime-image/pipeline/stage-link.js';
import { cacheDir } from '../test/harness/cache.js';
import { fixtureConfig, writeServeFixture } from '../test/integration/serve-fixture.js';

const HERE = dirname(fileURLToPath(import.meta.url));
const QUICK = !!process.env.SHARDSERVE_BENCH_QUICK;
const N1 = QUICK ? 60 : 400;
const N8 = QUICK ? 120 : 800;
const WARMUP = QUICK ? 10 : 40;
/**
 * Requests each server gets before its first measured one. A Node server answers faster for its
 * first ~2000 requests as V8 optimizes its hot code (rank 0 of the MLP: p50 4.8 ms over the first 400
 * requests, 2.8 ms after 2000); Python's does not change. Every contender gets the same.
 */
const SERVER_WARMUP = QUICK ? 50 : 2000;
/** Concurrency-1 runs are repeated; the run with the median p50 is reported (the machine is shared). */
const REPEATS = QUICK ? 1 : 3;
/** Rounds of the side-by-side front-door comparison (ours and KServe measured in turns). */
const ROUNDS = QUICK ? 2 : 5;
const log = (s: string) => process.stderr.write(s + '\n');

interface Stats { requests: number; concurrency: number; p50_ms: number; p99_ms: number; mean_ms: number; throughput_rps: number; errors: number; p50_ms_of_repeats?: number[] }

const r3 = (x: number) => Math.round(x * 1000) / 1000;
/** The middle value (the upper one of an even count), as the rounds' ratios are reported. */
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function stats(latencies: number[], wallMs: number, concurrency: number, errors: number): Stats {
  const s = [...latencies].sort((a, b) => a - b);
  const at = (q: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(q * s.length) - 1))];
  return {
    requests: s.length, concurrency, p50_ms: r3(at(0.5)), p99_ms: r3(at(0.99)), mean_ms: r3(s.reduce((a, b) => a + b, 0) / s.length),
    throughput_rps: Math.round((s.length / wallMs) * 1000 * 10) / 10, errors,
  };
}

/** `load` REPEATS times; the run whose p50 is the median, with every run's p50. */
async function loadMedian(once: () => Promise<void>, total: number, concurrency: number): Promise<Stats> {
  const runs: Stats[] = [];
  for (let i = 0; i < REPEATS; i++) runs.push(await load(once, total, concurrency));
  const sorted = [...runs].sort((a, b) => a.p50_ms - b.p50_ms);
  return { ...sorted[Math.floor(sorted.length / 2)], p50_ms_of_repeats: runs.map((r) => r.p50_ms) };
}

/** A server's warm-up before its first measurement (SERVER_WARMUP calls, one at a time). */
async function warmUp(...calls: Array<() => Promise<void>>): Promise<void> {
  for (const once of calls) for (let i = 0; i < SERVER_WARMUP; i++) await once();
}

/** `total` calls of `once`, `concurrency` at a time, after a warm-up. */
async function load(once: () => Promise<void>, total: number, concurrency: number): Promise<Stats> {
  for (let i = 0; i < WARMUP; i++) await once();
  const latencies: number[] = [];
  let next = 0;
  let errors = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < total) {
      next++;
      const s = performance.now();
      try {
        await once();
        latencies.push(performance.now() - s);
      } catch {
        errors++;
      }
    }
  }));
  return stats(latencies, performance.now() - t0, concurrency, errors);
}

function grpcInfer(address: string, model: string, inputName: string, shape: number[], data: Float32Array) {
  const client = new (services().oip)(address, credentials.createInsecure()) as any;
  const request = { model_name: model, inputs: [{ name: inputName, datatype: 'FP32', shape }], raw_input_contents: [Buffer.from(data.buffer, data.byteOffset, data.byteLength)] };
  return {
    once: () => new Promise<void>((resolve, reject) => client.ModelInfer(request, { deadline: Date.now() + 30_000 }, (e: Error | null) => (e ? reject(e) : resolve()))),
    close: () => client.close(),
  };
}

/**
 * The leanest gRPC client Node allows, for measuring servers rather than clients: one HTTP/2
 * connection (node:http2), the ModelInferRequest encoded once, and per call only HEADERS + DATA out
 * and the reply's frames back. The reply is checked (grpc-status 0 and a message) but not decoded.
 * A grpc-js client spends about 1 ms of CPU per unary call on this machine, which lands in every
 * server's latency alike.
 */
function leanInfer(address: string, model: string, inputName: string, shape: number[], data: Float32Array) {
  const session = http2.connect(`http://${address}`);
  session.on('error', () => undefined);
  const infer = (services().oip.service as any).ModelInfer;
  const body = frameMessage(infer.requestSerialize({ model_name: model, inputs: [{ name: inputName, datatype: 'FP32', shape }], raw_input_contents: [Buffer.from(data.buffer, data.byteOffset, data.byteLength)] }));
  const headers = { ':method': 'POST', ':path': infer.path as string, 'content-type': 'application/grpc', te: 'trailers', 'grpc-timeout': '30S' };
  return {
    once: () => new Promise<void>((resolve, reject) => {
      const call = session.request(headers);
      let bytes = 0;
      let status: string | undefined;
      const timer = setTimeout(() => call.close(http2.constants.NGHTTP2_CANCEL), 30_000);
      call.on('response', (h) => (status = h['grpc-status'] as string | undefined));
      call.on('trailers', (t) => (status = t['grpc-status'] as string | undefined));
      call.on('data', (c: Buffer) => (bytes += c.length));
      call.on('error', () => undefined);
      call.on('close', () => {
        clearTimeout(timer);
        if (status === '0' && bytes > 5) resolve();
        else reject(new Error(`ModelInfer over node:http2: grpc-status ${status ?? 'none'}, ${bytes} reply bytes`));
      });
      call.end(body);
    }),
    close: () => session.close(),
  };
}

function restInfer(base: string, model: string, inputName: string, shape: number[], data: Float32Array) {
  const body = JSON.stringify({ inputs: [{ name: inputName, datatype: 'FP32', shape, data: Array.from(data) }] });
  return async () => {
    const r = await fetch(`${base}/v2/models/${model}/infer`, { method: 'POST', body, headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(30_000) });
    await r.arrayBuffer();
    if (r.status !== 200) throw new Error(`HTTP ${r.status}`);
  };
}

/**
 * The REST counterpart of leanInfer: node:http on one kept-alive connection, the JSON body encoded
 * once, and per call only the request out and the reply back. The reply's status is checked and its
 * body drained, not parsed. fetch (restInfer) spends more of the client's own time per call, the
 * same in both servers' numbers.
 */
function restLeanInfer(base: string, model: string, inputName: string, shape: number[], data: Float32Array) {
  const body = Buffer.from(JSON.stringify({ inputs: [{ name: inputName, datatype: 'FP32', shape, data: Array.from(data) }] }));
  const url = new URL(`${base}/v2/models/${model}/infer`);
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
  const options = { host: url.hostname, port: url.port, path: url.pathname, method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': body.length } };
  return {
    once: () => new Promise<void>((resolve, reject) => {
      const req = httpRequest(options, (res) => {
        let bytes = 0;
        res.on('data', (c: Buffer) => (bytes += c.length));
        res.on('end', () => (res.statusCode === 200 && bytes > 0 ? resolve() : reject(new Error(`REST infer over node:http: HTTP ${res.statusCode}, ${bytes} reply bytes`))));
        res.on('error', reject);
      });
      req.setTimeout(30_000, () => req.destroy(new Error('REST infer over node:http timed out')));
      req.on('error', reject);
      req.end(body);
    }),
    close: () => agent.destroy(),
  };
}

/**
 * The floor: a bare grpc-js server in its own process that echoes what it gets, with the same
 * services and codecs as ours (OIP ModelInfer through proto-loader, the stage stream through the
 * hand codec) and no model. Whatever the same client measures against it, no server can beat by
 * much on this machine: it is the client's, the transport's and the OS's share of every number.
 */
function runFloorServer(): void {
  const server = new Server({ ...NO_CHANNELZ, 'grpc.max_receive_message_length': 1 << 30, 'grpc.max_send_message_length': 1 << 30 });
  server.addService(services().oip.service, {
    ModelInfer: (call: ServerUnaryCall<any, any>, callback: sendUnaryData<any>) => {
      const r = call.request;
      callback(null, { model_name: r.model_name, model_version: '1', id: r.id, outputs: r.inputs.map((t: any) => ({ name: t.name, datatype: t.datatype, shape: t.shape })), raw_output_contents: r.raw_input_contents });
    },
  });
  server.addService(services().stage.service, {
    Forward: (call: ServerDuplexStream<any, any>) => {
      call.on('data', (m: any) => call.write({ id: m.id, outputs: m.request?.tensors ?? [], timings: [{ stage: 1, compute_us: '0' }] }));
      call.on('end', () => call.end());
      call.on('error', () => undefined);
    },
    Status: (_call: ServerUnaryCall<any, any>, callback: sendUnaryData<any>) => callback(null, {}),
  });
  // The same echoes on our own transport (grpc-h2.ts on h2/), which the front door and the rank port use.
  const infer = (services().oip.service as any).ModelInfer;
  const echoInfer: MethodHandler = { kind: 'unary', decode: (b) => infer.requestDeserialize(b), encodeFramed: (m) => frameMessage(infer.responseSerialize(m)), handle: (r: any) => (
    { model_name: r.model_name, model_version: '1', id: r.id, outputs: r.inputs.map((t: any) => ({ name: t.name, datatype: t.datatype, shape: t.shape })), raw_output_contents: r.raw_input_contents }) };
  const own = createGrpcServer({
    [infer.path]: echoInfer,
    [FORWARD_PATH]: { kind: 'bidi', decode: decodeStageMessage, encodeFramed: frameStageReply, open: (call) => {
      call.on('data', (m: any) => call.write({ id: m.id, outputs: m.request?.tensors ?? [], timings: [{ stage: 1, compute_us: '0' }] }));
      call.on('end', () => call.end());
    } },
  }, { maxMessageBytes: 1 << 30 });
  // And the OS's own floor: a plain TCP socket that sends back every byte it gets (no HTTP/2, no
  // gRPC, no message framing), to show what a 64 KiB round trip costs between two processes here.
  const tcp = createNetServer((socket) => {
    socket.setNoDelay(true);
    socket.on('data', (chunk) => socket.write(chunk));
    socket.on('error', () => undefined);
  });
  server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, port) => {
    if (err) throw err;
    void own.listen('127.0.0.1', 0).then((ownPort) => tcp.listen(0, '127.0.0.1', () => process.stdout.write(`${port} ${(tcp.address() as AddressInfo).port} ${ownPort}\n`)));
  });
  // Lives as long as the benchmark that started it.
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}

async function floorRun(mlpShape: number[], mlpData: Float32Array, hopShape: number[], hopData: Float32Array) {
  const child = spawn(process.execPath, [...process.execArgv, fileURLToPath(import.meta.url), '--floor-server'], { stdio: ['pipe', 'pipe', 'inherit'] });
  try {
    const [port, tcpPort, ownPort] = (await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('floor server did not start within 60 s')), 60_000);
      child.stdout!.once('data', (d) => {
        clearTimeout(timer);
        resolve(String(d).trim());
      });
    })).split(' ');
    const address = `127.0.0.1:${port}`;
    const tcp = await tcpEcho(Number(tcpPort), hopData.byteLength);
    const unary4 = grpcInfer(address, 'net', 'x', mlpShape, mlpData);
    const unary64 = grpcInfer(address, 'net', 'x', hopShape, hopData);
    const stream = streamEcho(address, hopShape, hopData);
    const linkEcho = await stageLinkEcho(`127.0.0.1:${ownPort}`, hopShape, hopData);
    const lean4 = leanInfer(address, 'net', 'x', mlpShape, mlpData);
    const unary4Own = grpcInfer(`127.0.0.1:${ownPort}`, 'net', 'x', mlpShape, mlpData);
    const lean4Own = leanInfer(`127.0.0.1:${ownPort}`, 'net', 'x', mlpShape, mlpData);
    await warmUp(unary4.once, unary4Own.once, lean4Own.once, linkEcho.once);
    const result = {
      unary_echo_model_input_c1: await loadMedian(unary4.once, N1, 1),
      unary_echo_model_input_lean_client_c1: await loadMedian(lean4.once, N1, 1),
      unary_echo_model_input_own_h2_c1: await loadMedian(unary4Own.once, N1, 1),
      unary_echo_model_input_own_h2_lean_client_c1: await loadMedian(lean4Own.once, N1, 1),
      unary_echo_64KiB_c1: await loadMedian(unary64.once, N1, 1),
      stream_echo_64KiB_c1: await loadMedian(stream.once, N1, 1),
      stream_echo_64KiB_own_h2_c1: await loadMedian(linkEcho.once, N1, 1),
      stream_echo_64KiB_own_h2_after_5ms_idle_c1: await afterIdle(linkEcho.once, 5, N1),
      tcp_echo_64KiB_c1: await loadMedian(tcp.once, N1, 1),
      tcp_echo_64KiB_after_5ms_idle_c1: await afterIdle(tcp.once, 5, N1),
    };
    tcp.close();
    linkEcho.close();
    lean4.close();
    lean4Own.close();
    unary4Own.close();
    unary4.close();
    unary64.close();
    stream.close();
    return result;
  } finally {
    child.stdin!.end();
    child.kill('SIGTERM');
  }
}

/** A plain TCP connection to the floor server's byte echo: `once` sends `bytes` and waits until they are all back. */
async function tcpEcho(port: number, bytes: number) {
  const socket = connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const payload = Buffer.alloc(bytes, 7);
  let pending = 0;
  let done: (() => void) | undefined;
  socket.on('data', (chunk) => {
    pending -= chunk.length;
    if (pending <= 0 && done) {
      const d = done;
      done = undefined;
      d();
    }
  });
  return {
    once: () => new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('tcp echo timed out')), 30_000);
      pending = bytes;
      done = () => {
        clearTimeout(timer);
        resolve();
      };
      socket.write(payload);
    }),
    close: () => socket.destroy(),
  };
}

/**
 * `total` calls of `once`, each after `idleMs` with nothing to do (only the call is timed): what each
 * rank of a pipeline at concurrency 1 sees between its turns, and on this machine an idle process
 * answers more slowly than a busy one.
 */
async function afterIdle(once: () => Promise<void>, idleMs: number, total: number): Promise<Stats> {
  const latencies: number[] = [];
  const t0 = performance.now();
  for (let i = 0; i < total; i++) {
    await new Promise((resolve) => setTimeout(resolve, idleMs));
    const s = performance.now();
    await once();
    latencies.push(performance.now() - s);
  }
  return stats(latencies, performance.now() - t0, 1, 0);
}

/** One message each way on one long-lived StageService.Forward stream: a stage hop's transport alone. */
function streamEcho(address: string, shape: number[], data: Float32Array) {
  const client = new (services().stage)(address, credentials.createInsecure()) as any;
  const stream = client.Forward();
  const waiting = new Map<string, () => void>();
  stream.on('data', (reply: any) => {
    const w = waiting.get(String(reply.id));
    waiting.delete(String(reply.id));
    w?.();
  });
  stream.on('error', () => undefined);
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let id = 1;
  return {
    once: () => new Promise<void>((resolve, reject) => {
      const key = String(id++);
      const timer = setTimeout(() => reject(new Error('stream echo timed out')), 30_000);
      waiting.set(key, () => {
        clearTimeout(timer);
        resolve();
      });
      stream.write({ id: key, request: { tensors: [{ name: 'a0', datatype: 'FP32', shape, data: bytes }], budget_us: '30000000', outputs: [] } });
    }),
    close: () => {
      stream.end();
      client.close();
    },
  };
}

/** The same echo through a StageLink (the rank port's client) to the rank transport's server. */
async function stageLinkEcho(address: string, shape: number[], data: Float32Array) {
  const link = new StageLink({ address, toStage: 1 });
  const connected = new Promise<void>((resolve) => link.once('connected', () => resolve()));
  link.start();
  await connected;
  const tensor = { name: 'a0', datatype: 'FP32' as const, shape, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
  return {
    once: async () => void (await link.send([tensor], [], Date.now() + 30_000)),
    close: () => link.close(),
  };
}

/**
 * `run` between two reads of rank 0's stage-compute histogram (its /metrics): the mean time the
 * stage spent in onnxruntime per request during `run` (load's short warm-up included), measured
 * inside the server.
 */
async function withOursCompute<T>(httpBase: string, run: () => Promise<T>): Promise<[T, number]> {
  const read = async () => {
    const text = await (await fetch(`${httpBase}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
    const get = (what: string) => Number(new RegExp(`^shardserve_stage_compute_seconds_${what}\\{[^}]*stage="0"[^}]*\\} (\\S+)$`, 'm').exec(text)?.[1]);
    return { sum: get('sum'), count: get('count') };
  };
  const before = await read();
  const result = await run();
  const after = await read();
  const mean = ((after.sum - before.sum) / (after.count - before.count)) * 1000;
  if (!Number.isFinite(mean)) throw new Error('rank 0 /metrics has no shardserve_stage_compute_seconds for stage 0');
  return [result, mean];
}

/** A model whose stages cost nearly nothing, so a pipeline's extra latency is the hops: a 64 KiB activation. */
function hopNetwork(stages = 4): SampleNetwork {
  const n = 16384; // float32 → 64 KiB
  const g = new GraphBuilder('hop').input('x', 'F32', [1, n]);
  const weights = new Map<string, { dtype: 'F32'; shape: number[]; data: Uint8Array }>();
  let cur = 'x';
  for (let s = 0; s < stages; s++) {
    const b = seededFloats(n, 500 + s, 0.01);
    weights.set(`bias${s}`, { dtype: 'F32', shape: [n], data: new Uint8Array(b.buffer) });
    g.initializer(`bias${s}`, 'F32', [n], new Float32Array(n));
    const out = s === stages - 1 ? 'y' : `a${s}`;
    g.node('Add', [cur, `bias${s}`], [out]);
    cur = out;
  }
  g.output('y', 'F32', [1, n]);
  return {
    model: g.model(), weights,
    stageOf: (P) => (name) => (name.startsWith('bias') ? Math.floor((Number(name.slice(4)) * P) / stages) : undefined),
    sampleInput: () => ({ x: { dims: [1, n], data: seededFloats(n, 9, 1) } }),
  };
}

function mergedModel(net: SampleNetwork): Uint8Array {
  return buildStageModel(net.model, planPipeline(net.model, { stages: 1 }), 0, net.weights);
}

async function singleProcess(net: SampleNetwork, shape: number[], data: Float32Array): Promise<{ c1: Stats; c8: Stats }> {
  const session = await ort.InferenceSession.create(mergedModel(net), sessionOptions());
  const feeds = { x: new ort.Tensor('float32', data, shape) };
  const once = async () => void (await session.run(feeds));
  await warmUp(once);
  const c1 = await loadMedian(once, N1, 1);
  const c8 = await load(once, N8, 8);
  await session.release();
  return { c1, c8 };
}

/** `stages` ranks as local processes (what `shardserve up` runs), ready to serve. */
async function startGroup(dir: string, net: SampleNetwork, stages: number): Promise<{ grpc: string; http: string; group: LocalGroup; stop: () => Promise<void> }> {
  const fixture = writeServeFixture(join(dir, `${net.model.graph!.name}-${stages}`), net, stages);
  const ports = { grpc: await freePort(), http: await freePort(), rank: await freePortRange(stages) };
  const group = new LocalGroup({ config: fixtureConfig(fixture, ports, 'net'), log: () => {} });
  group.start();
  const stop = () => group.stop(10_000);
  try {
    await group.waitReady(180_000);
  } catch (e) {
    await stop();
    throw e;
  }
  return { grpc: `127.0.0.1:${ports.grpc}`, http: `http://127.0.0.1:${ports.http}`, group, stop };
}

async function withGroup<T>(dir: string, net: SampleNetwork, stages: number, fn: (grpc: string, http: string) => Promise<T>): Promise<T> {
  const g = await startGroup(dir, net, stages);
  try {
    return await fn(g.grpc, g.http);
  } finally {
    await g.stop();
  }
}

/** CPU time (user + system, every thread) a process has used so far, in ms, from /proc (10 ms ticks). */
function processCpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const HOP_STAGES = [1, 2, 4] as const;
const HOP_CLIENTS = ['grpc_js_client', 'lean_client'] as const;
interface HopResult {
  p50_ms_by_stages: Record<number, number>;
  added_p50_ms_per_hop_from_2_stages: number;
  added_p50_ms_per_hop_from_4_stages: number;
  by_round: { from_2_stages: number[]; from_4_stages: number[] };
  meets_target: boolean;
  p50_ms_of_rounds_by_stages: Record<number, number[]>;
}

/**
 * The stage hop, side by side: groups of 1, 2 and 4 stages up at once (each idle while another is
 * measured), ROUNDS rounds of N1 requests at concurrency 1 against each in turn (order alternating),
 * with each client. A slow spell of the machine lands on every group of a round alike, and the
 * per-hop figure is taken within a round. Also each rank process's CPU time per request.
 */
async function hopsSideBySide(dir: string, net: SampleNetwork): Promise<Record<(typeof HOP_CLIENTS)[number], HopResult> & { cpu_ms_per_request_by_rank: Record<number, number[]> }> {
  const x = net.sampleInput(1).x;
  const groups: Awaited<ReturnType<typeof startGroup>>[] = [];
  try {
    for (const stages of HOP_STAGES) groups.push(await startGroup(dir, net, stages));
    const clients = Object.fromEntries(HOP_CLIENTS.map((kind) => [kind, groups.map((g) =>
      kind === 'grpc_js_client' ? grpcInfer(g.grpc, 'net', 'x', x.dims, x.data) : leanInfer(g.grpc, 'net', 'x', x.dims, x.data))]));
    for (const kind of HOP_CLIENTS) await warmUp(...clients[kind].map((c) => c.once));
    const p50s = Object.fromEntries(HOP_CLIENTS.map((kind) => [kind, HOP_STAGES.map(() => [] as number[])]));
    const cpuMs = HOP_STAGES.map((stages) => new Array<number>(stages).fill(0));
    const requests = HOP_STAGES.map(() => 0);
    for (let round = 0; round < ROUNDS; round++) {
      for (const kind of HOP_CLIENTS) {
        for (const i of round % 2 === 0 ? [0, 1, 2] : [2, 1, 0]) {
          const pids = Array.from({ length: HOP_STAGES[i] }, (_, r) => groups[i].group.pid(r)!);
          const before = pids.map(processCpuMs);
          p50s[kind][i].push((await load(clients[kind][i].once, N1, 1)).p50_ms);
          pids.forEach((pid, r) => (cpuMs[i][r] += processCpuMs(pid) - before[r]));
          requests[i] += N1 + WARMUP;
        }
      }
    }
    for (const kind of HOP_CLIENTS) for (const c of clients[kind]) c.close();
    const result = (kind: (typeof HOP_CLIENTS)[number]): HopResult => {
      const perHop = (i: number) => p50s[kind][i].map((p, round) => (p - p50s[kind][0][round]) / (HOP_STAGES[i] - 1));
      const [from2, from4] = [perHop(1), perHop(2)];
      return {
        p50_ms_by_stages: Object.fromEntries(HOP_STAGES.map((stages, i) => [stages, median(p50s[kind][i])])),
        added_p50_ms_per_hop_from_2_stages: r3(median(from2)),
        added_p50_ms_per_hop_from_4_stages: r3(median(from4)),
        by_round: { from_2_stages: from2.map(r3), from_4_stages: from4.map(r3) },
        meets_target: Math.max(median(from2), median(from4)) <= 0.5,
        p50_ms_of_rounds_by_stages: Object.fromEntries(HOP_STAGES.map((stages, i) => [stages, p50s[kind][i]])),
      };
    };
    return {
      grpc_js_client: result('grpc_js_client'),
      lean_client: result('lean_client'),
      cpu_ms_per_request_by_rank: Object.fromEntries(HOP_STAGES.map((stages, i) => [stages, cpuMs[i].map((ms) => r3(ms / requests[i]))])),
    };
  } finally {
    for (const g of groups) await g.stop();
  }
}

/** Main-thread GC pauses from now until stop(): total milliseconds and the number of mark-compacts. */
function gcPauses(): { stop: () => { ms: number; major: number } } {
  let ms = 0;
  let major = 0;
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      ms += e.duration;
      if ((e as any).detail?.kind === constants.NODE_PERFORMANCE_GC_MAJOR) major++;
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  return { stop: () => (obs.disconnect(), { ms, major }) };
}

/** Every rank of the group inside this process: the hop's code path without OS scheduling between processes. */
async function withInProcessGroup<T>(dir: string, net: SampleNetwork, stages: number, fn: (grpc: string) => Promise<T>): Promise<T> {
  const fixture = writeServeFixture(join(dir, `${net.model.graph!.name}-inproc-${stages}`), net, stages);
  const ports = { grpc: await freePort(), http: await freePort(), rank: await freePortRange(stages) };
  const config = fixtureConfig(fixture, ports, 'net');
  const ranks = [];
  for (let r = 0; r < stages; r++) {
    ranks.push(await startRank({
      env: { rank: r, group: 0, worldSize: stages, pipelineStages: stages, tensorParallel: 1, peers: '127.0.0.1:{port}', configPath: '' },
      config, loader: loadCheckpointStage, bindHost: '127.0.0.1', httpPort: r === 0 ? ports.http : 0,
    }));
  }
  try {
    await Promise.all(ranks.map((r) => r.loaded));
    const until = Date.now() + 60_000;
    while (!ranks[0].plane!.ready()) {
      if (Date.now() > until) throw new Error('in-process group not ready');
      await new Promise((r) => setTimeout(r, 20));
    }
    return await fn(`127.0.0.1:${ports.grpc}`);
  } finally {
    await Promise.all(ranks.map((r) => r.stop('bench over', 2_000)));
  }
}

/** The cached venv with kserve + onnxruntime (bench/requirements-serve.txt), installed on first use. */
function ensureBenchVenv(): { python?: string; error?: string } {
  const req = join(HERE, 'requirements-serve.txt');
  const hash = createHash('sha256').update(readFileSync(req)).digest('hex').slice(0, 16);
  const dir = cacheDir(`venv-bench-serve-${hash}`);
  const python = join(dir, 'bin', 'python');
  const marker = join(dir, 'shardserve-bench-ok');
  if (existsSync(marker)) return { python };
  log(`bench: installing kserve + onnxruntime into ${dir} (once) ...`);
  const mk = spawnSync('python3', ['-m', 'venv', dir], { encoding: 'utf8', timeout: 120_000 });
  if (mk.status !== 0) return { error: `python3 -m venv failed: ${(mk.stderr || mk.error?.message || '').trim().slice(-400)}` };
  const pip = spawnSync(python, ['-m', 'pip', 'install', '-q', '-r', req], { encoding: 'utf8', timeout: 30 * 60_000 });
  if (pip.status !== 0) return { error: `pip install -r bench/requirements-serve.txt failed: ${(pip.stderr || pip.error?.message || '').trim().slice(-600)}` };
  const check = spawnSync(python, ['-c', 'import kserve, onnxruntime'], { encoding: 'utf8', timeout: 120_000 });
  if (check.status !== 0) return { error: `kserve does not import: ${check.stderr.trim().slice(-600)}` };
  writeFileSync(marker, new Date().toISOString());
  return { python };
}

/** Asks kserve_server.py for the session.run times since the last ask (it writes them on SIGUSR1). */
async function kserveRuns(child: ChildProcess, report: string): Promise<{ count: number; mean_ms: number }> {
  const file = `${report}.runs`;
  rmSync(file, { force: true });
  child.kill('SIGUSR1');
  const until = Date.now() + 10_000;
  while (!existsSync(file)) {
    if (Date.now() > until) throw new Error('KServe model server did not report its session.run times within 10 s of SIGUSR1');
    await new Promise((r) => setTimeout(r, 20));
  }
  return JSON.parse(readFileSync(file, 'utf8'));
}

/** A front door under comparison: where it listens and how to learn the compute of the requests it served. */
interface FrontDoor {
  grpc: string;
  http: string;
  /** The same model's session.run p50 back to back, in the server's own language. */
  ortP50: number;
  /** Runs `run`; also returns the mean time session.run took inside the server for the requests made meanwhile. */
  withCompute<T>(run: () => Promise<T>): Promise<[T, number]>;
}

/** KServe's model server (kserve_server.py in the bench venv) on the merged model, until stop(). */
async function startKserve(dir: string, net: SampleNetwork, shape: number[]): Promise<{ error: string } | { door: FrontDoor; info: Record<string, unknown>; stop: () => Promise<void> }> {
  const venv = ensureBenchVenv();
  if (!venv.python) return { error: venv.error ?? 'no bench venv' };
  const modelPath = join(dir, 'kserve-model.onnx');
  writeFileSync(modelPath, mergedModel(net));
  const [httpPort, grpcPort] = [await freePort(), await freePort()];
  const report = join(dir, 'kserve-report.json');
  const child: ChildProcess = spawn(venv.python, [join(HERE, 'kserve_server.py')], {
    env: { ...process.env, KSB_MODEL_PATH: modelPath, KSB_MODEL_NAME: 'net', KSB_HTTP_PORT: String(httpPort), KSB_GRPC_PORT: String(grpcPort), KSB_INPUT_SHAPE: JSON.stringify(shape), KSB_REPORT: report },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const stop = async () => {
    child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 500));
    if (child.exitCode === null) child.kill('SIGKILL');
  };
  const until = Date.now() + 180_000;
  for (;;) {
    const ok = await fetch(`http://127.0.0.1:${httpPort}/v2/models/net/ready`, { signal: AbortSignal.timeout(1000) }).then((r) => r.status === 200, () => false);
    if (ok) break;
    if (Date.now() > until || child.exitCode !== null) {
      await stop();
      return { error: `KServe model server did not become ready: ${output.slice(-800)}` };
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  const info = JSON.parse(readFileSync(report, 'utf8'));
  const door: FrontDoor = {
    grpc: `127.0.0.1:${grpcPort}`, http: `http://127.0.0.1:${httpPort}`, ortP50: info.ort_p50_ms,
    // The compute of the requests `run` made (load's short warm-up included), from KServe's process (kserve_server.py, SIGUSR1).
    withCompute: async (run) => {
      await kserveRuns(child, report);
      const result = await run();
      return [result, (await kserveRuns(child, report)).mean_ms];
    },
  };
  return { door, info, stop };
}

const CLIENTS = ['grpc_js_client', 'lean_client', 'rest', 'rest_lean_client'] as const;

/**
 * Our front door (rank 0 of a 1-stage group) and KServe's, both up at once and measured in turns:
 * each round runs N1 requests at concurrency 1 against one, then the other (the order alternates
 * between rounds), with each client. A slow spell of the machine then lands on both sides of a
 * round's ratio instead of on one server.
 */
async function frontDoorsSideBySide(ours: FrontDoor, kserve: FrontDoor, shape: number[], data: Float32Array) {
  const clientFor = (door: FrontDoor, kind: (typeof CLIENTS)[number]) =>
    kind === 'grpc_js_client' ? grpcInfer(door.grpc, 'net', 'x', shape, data)
      : kind === 'lean_client' ? leanInfer(door.grpc, 'net', 'x', shape, data)
        : kind === 'rest' ? { once: restInfer(door.http, 'net', 'x', shape, data), close: () => undefined }
          : restLeanInfer(door.http, 'net', 'x', shape, data);
  const doors = { ours, kserve };
  const clients = Object.fromEntries(CLIENTS.map((kind) => [kind, { ours: clientFor(ours, kind), kserve: clientFor(kserve, kind) }])) as Record<(typeof CLIENTS)[number], Record<'ours' | 'kserve', { once: () => Promise<void>; close: () => void }>>;
  for (const kind of CLIENTS) await warmUp(clients[kind].ours.once, clients[kind].kserve.once);
  type Round = { p50_ms: number; compute_mean_ms: number };
  const rounds = Object.fromEntries(CLIENTS.map((kind) => [kind, { ours: [] as Round[], kserve: [] as Round[] }]));
  for (let round = 0; round < ROUNDS; round++) {
    for (const kind of CLIENTS) {
      const order = round % 2 === 0 ? (['ours', 'kserve'] as const) : (['kserve', 'ours'] as const);
      for (const who of order) {
        const [s, compute] = await doors[who].withCompute(() => load(clients[kind][who].once, N1, 1));
        rounds[kind][who].push({ p50_ms: s.p50_ms, compute_mean_ms: r3(compute) });
      }
    }
  }
  for (const kind of CLIENTS) for (const who of ['ours', 'kserve'] as const) clients[kind][who].close();
  const compare = (kind: (typeof CLIENTS)[number], overhead: (door: FrontDoor, r: Round) => number) => {
    const ratios = rounds[kind].ours.map((r, i) => overhead(ours, r) / overhead(kserve, rounds[kind].kserve[i]));
    const ratio = median(ratios);
    return {
      ours_ms: r3(median(rounds[kind].ours.map((r) => overhead(ours, r)))),
      kserve_ms: r3(median(rounds[kind].kserve.map((r) => overhead(kserve, r)))),
      ratio: r3(ratio), ratio_by_round: ratios.map(r3), target_ratio: 1 / 3, meets_target: ratio <= 1 / 3,
    };
  };
  return Object.fromEntries(CLIENTS.map((kind) => [kind, {
    back_to_back_compute_subtracted: compare(kind, (door, r) => r.p50_ms - door.ortP50),
    compute_measured_in_server_subtracted: compare(kind, (_door, r) => r.p50_ms - r.compute_mean_ms),
    rounds: rounds[kind],
  }]));
}

async function main() {
  // onnxruntime's telemetry off here and in the processes this starts, as bin/shardserve.mjs keeps it off.
  process.env.ORT_DISABLE_TELEMETRY ??= '1';
  const dir = mkdtempSync(join(tmpdir(), 'bench-serve-'));
  const started = new Date().toISOString();
  const loadBefore = loadavg().map((x) => Math.round(x * 100) / 100);
  const net = mlpNetwork([256, 1024, 1024, 1024, 256]);
  const BATCH = 4;
  const input = net.sampleInput(BATCH).x;
  const shape = input.dims;
  log(`bench: model MLP 256-1024-1024-1024-256, batch ${BATCH}; ${N1} requests at concurrency 1, ${N8} at 8`);

  log('bench: single-process onnxruntime-node ...');
  const single = await singleProcess(net, shape, input.data);
  const pipeline: Record<string, unknown> = {};
  for (const stages of [1, 2, 4]) {
    log(`bench: shardserve, ${stages} stage(s) ...`);
    pipeline[`${stages}_stages`] = await withGroup(dir, net, stages, async (grpcAddr) => {
      const g = grpcInfer(grpcAddr, 'net', 'x', shape, input.data);
      await warmUp(g.once);
      const c1 = await loadMedian(g.once, N1, 1);
      const c8 = await load(g.once, N8, 8);
      g.close();
      return { grpc_c1: c1, grpc_c8: c8 };
    });
  }

  log('bench: stage hop with a 64 KiB activation: 1, 2 and 4 stages side by side ...');
  const hop = hopNetwork(4);
  const hopInput = hop.sampleInput(1).x;
  const hops = await hopsSideBySide(dir, hop);
  const inProcP50: Record<number, number> = {};
  const inProcCpu: Record<number, number> = {};
  const inProcGc: Record<number, { pause_ms_per_request: number; major_per_100_requests: number }> = {};
  for (const stages of [1, 2, 4]) {
    [inProcP50[stages], inProcCpu[stages], inProcGc[stages]] = await withInProcessGroup(dir, hop, stages, async (grpcAddr) => {
      const g = grpcInfer(grpcAddr, 'net', 'x', hopInput.dims, hopInput.data);
      await warmUp(g.once);
      const gc = gcPauses();
      const cpu0 = process.cpuUsage();
      const s = await loadMedian(g.once, N1, 1);
      const cpu = process.cpuUsage(cpu0);
      const pauses = gc.stop();
      g.close();
      // CPU time (user + system) this process spent per request: client, front door and every stage.
      const requests = REPEATS * (N1 + WARMUP);
      return [s.p50_ms, (cpu.user + cpu.system) / 1000 / requests, {
        pause_ms_per_request: Math.round((pauses.ms / requests) * 1000) / 1000, major_per_100_requests: Math.round((pauses.major * 100 * 10) / requests) / 10,
      }] as const;
    });
  }
  // The floor comparisons below use the grpc-js client, as the floors' own clients do.
  const perHop4 = hops.grpc_js_client.added_p50_ms_per_hop_from_4_stages;

  log('bench: floor: a bare grpc-js echo server in its own process, same client ...');
  const floor = await floorRun(shape, input.data, hopInput.dims, hopInput.data);

  log('bench: front doors side by side: shardserve (1 stage) and KServe\'s Python model server (kserve + onnxruntime), in turns ...');
  const ks = await startKserve(dir, net, shape);
  let frontDoors: Record<string, unknown>;
  let kserve: Record<string, unknown>;
  if ('error' in ks) {
    frontDoors = { error: ks.error };
    kserve = { error: ks.error };
  } else {
    try {
      frontDoors = await withGroup(dir, net, 1, (grpcAddr, httpBase) => frontDoorsSideBySide(
        { grpc: grpcAddr, http: httpBase, ortP50: single.c1.p50_ms, withCompute: (run) => withOursCompute(httpBase, run) }, ks.door, shape, input.data));
      // Warm from the comparison: KServe's throughput at concurrency 8, as the pipeline's above.
      const g = grpcInfer(ks.door.grpc, 'net', 'x', shape, input.data);
      kserve = { ...ks.info, grpc_c8: await load(g.once, N8, 8) };
      g.close();
    } finally {
      await ks.stop();
    }
  }

  const ours1 = (pipeline['1_stages'] as any).grpc_c1.p50_ms as number;
  const oursOverhead = ours1 - single.c1.p50_ms;
  const result = {
    benchmark: 'serve',
    started,
    machine: { cpus: cpus().length, cpu: cpus()[0]?.model, node: process.version, onnxruntime_node: (ort as any).env?.versions?.node ?? 'see package.json', load_average_1_5_15_before: loadBefore, load_average_1_5_15_after: loadavg().map((x) => Math.round(x * 100) / 100),
      note: 'latencies include OS scheduling of separate processes; on a machine whose load average exceeds its core count they are dominated by it' },
    model: { net: 'MLP 256-1024-1024-1024-256 (float32), 4 parameter groups (one per stage at 4 stages)', batch: BATCH, input_bytes: input.data.byteLength },
    session: { graph_optimization: 'basic', intra_op_threads: 1 },
    single_process_onnxruntime_node: { c1: single.c1, c8: single.c8 },
    shardserve: pipeline,
    stage_hop_64KiB: {
      activation_bytes: 65536,
      target_ms: 0.5,
      method: `p50 end-to-end latency (gRPC front door, concurrency 1) of a model whose stages are one Add on a [1,16384] float32 tensor, cut into P stages; per hop = (p50(P) - p50(1)) / (P - 1). Groups of 1, 2 and 4 stages are up at once and measured in turns: ${ROUNDS} rounds of ${N1} requests against each (order alternating), with the grpc-js client and with the bare node:http2 client; per hop is taken within each round, and the median over rounds is reported`,
      ...hops,
      cpu_note: 'cpu_ms_per_request_by_rank: CPU time (user + system, all threads) each rank process used per request over the rounds, warm-ups included; rank 0 also runs the front door',
      in_process: {
        p50_ms_by_stages: inProcP50,
        added_p50_ms_per_hop_from_4_stages: r3((inProcP50[4] - inProcP50[1]) / 3),
        cpu_ms_per_request_by_stages: Object.fromEntries(Object.entries(inProcCpu).map(([k, v]) => [k, r3(v)])),
        added_cpu_ms_per_hop_from_4_stages: r3((inProcCpu[4] - inProcCpu[1]) / 3),
        gc_by_stages: inProcGc,
        gc_note: 'main-thread GC pauses (perf_hooks gc entries) per request, and mark-compacts per 100 requests: with ArrayBuffers as the garbage, V8 starts mark-compacts on external memory long before its heap limit',
        note: 'all ranks in one process (same gRPC streams over loopback, same code): no scheduling between processes. The CPU time per hop is what a hop costs on an idle core, whatever the machine\'s load',
      },
    },
    floor: {
      ...floor,
      method: 'the same Node gRPC client against a bare grpc-js server (own process, same .proto and codecs, no model) that echoes the request: what the client, HTTP/2 and the OS cost without any server work; the *_own_h2 floors are the same echoes on our own transport (grpc-h2.ts on h2/), which the front door and the rank port use: the same grpc-js client for ModelInfer, a StageLink on the client end of the stage stream; *_after_5ms_idle: each echo follows 5 ms of idle time, as each rank of a pipeline at concurrency 1 sits idle between its turns; tcp_echo_*: a plain TCP socket in the floor server\'s process that sends back every byte it gets (no HTTP/2, no gRPC, no framing), the same 64 KiB each way: what a round trip between two processes costs here before any protocol',
      front_door_overhead_over_unary_echo_ms: r3(oursOverhead - floor.unary_echo_model_input_c1.p50_ms),
      stage_hop_p50_ms_per_hop_over_stream_echo_ms: r3(perHop4 - floor.stream_echo_64KiB_c1.p50_ms),
      hop_ratio_to_stream_echo: r3(perHop4 / floor.stream_echo_64KiB_c1.p50_ms),
      stage_hop_p50_ms_per_hop_over_own_h2_stream_echo_ms: r3(perHop4 - floor.stream_echo_64KiB_own_h2_c1.p50_ms),
      front_door_overhead_over_own_h2_unary_echo_ms: r3(oursOverhead - floor.unary_echo_model_input_own_h2_c1.p50_ms),
      front_door_ratio_to_unary_echo: r3(oursOverhead / floor.unary_echo_model_input_c1.p50_ms),
      // A hop from 2 stages is one 64 KiB round trip between two processes, each end idle in between.
      stage_hop_from_2_stages_lean_client_minus_tcp_echo_after_5ms_idle_ms: r3(hops.lean_client.added_p50_ms_per_hop_from_2_stages - floor.tcp_echo_64KiB_after_5ms_idle_c1.p50_ms),
    },
    kserve,
    front_door_overhead: {
      method: `ours = rank 0 of a 1-stage group, KServe = its Python model server, same merged model, both up at once; ${ROUNDS} rounds, each of ${N1} requests at concurrency 1 against one and then the other (order alternating), with each client: grpc-js, a bare node:http2 gRPC client (request encoded once, reply checked, not decoded: grpc-js spends about 1 ms of CPU per call, the same in both servers' numbers), and REST with JSON data both ways, with fetch and with a bare node:http client (body encoded once, reply drained, not parsed). Overhead = p50 minus the model's compute, taken two ways: session.run p50 back to back in the server's own language (Node for ours, Python for KServe), or the mean session.run time measured inside the server over the same round (its ${WARMUP} warm-up requests included) (rank 0's stage-compute histogram; KServe's predict, timed by kserve_server.py), since a run between requests takes longer than back to back. ratio = median over rounds of ours / KServe`,
      target_ratio: 1 / 3,
      ...frontDoors,
      unary_echo_floor_ms: {
        grpc_js_client: { grpc_js_server: floor.unary_echo_model_input_c1.p50_ms, own_h2_server: floor.unary_echo_model_input_own_h2_c1.p50_ms },
        lean_client: { grpc_js_server: floor.unary_echo_model_input_lean_client_c1.p50_ms, own_h2_server: floor.unary_echo_model_input_own_h2_lean_client_c1.p50_ms },
      },
    },
  };
  mkdirSync(join(HERE, 'results'), { recursive: true });
  const out = join(HERE, 'results', 'serve.json');
  writeFileSync(out + '.tmp', JSON.stringify(result, null, 2) + '\n');
  renameSync(out + '.tmp', out);
  rmSync(dir, { recursive: true, force: true });
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
  log(`bench: wrote ${out}`);
}

if (process.argv.includes('--floor-server')) runFloorServer();
else await main();
