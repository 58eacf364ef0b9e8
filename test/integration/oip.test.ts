import { credentials, status } from '@grpc/grpc-js';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { seededFloats } from '../../core/onnx/graph-builder.js';
import { services } from '../../runtime-image/protos.js';
import { bytesOf, cutByNodes, mlpModel, runSingleDevice } from './serve-models.js';
import { call, oipClient, startInProcessGroup, type InProcessGroup, type OipClient } from './serve-client.js';

// The front door speaks the Open Inference Protocol over gRPC and REST; bad input gets a specific
// INVALID_ARGUMENT/400 (or NOT_FOUND/404) and the server keeps serving.
const MAX = 64 * 1024;
let group: InProcessGroup;
let client: OipClient;
const x = seededFloats(2 * 16, 5, 1);
let expected: Buffer;

beforeAll(async () => {
  const model = mlpModel();
  const { spec, stageModels } = cutByNodes(model, [6]);
  group = await startInProcessGroup(spec, stageModels, { limits: { maxMessageBytes: MAX } });
  client = oipClient(group.grpcAddress);
  expected = bytesOf((await runSingleDevice(model, { x: new ort.Tensor('float32', x, [2, 16]) })).y);
});
afterAll(async () => {
  client?.close();
  await group?.stop();
});

const goodGrpc = () => ({ model_name: 'net', inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 16] }], raw_input_contents: [Buffer.from(x.buffer)] });

describe('gRPC inference.GRPCInferenceService', () => {
  it('answers liveness, readiness and metadata', async () => {
    expect(await call(client, 'ServerLive', {})).toEqual({ live: true });
    expect(await call(client, 'ServerReady', {})).toEqual({ ready: true });
    expect(await call(client, 'ModelReady', { name: 'net' })).toEqual({ ready: true });
    const sm = await call(client, 'ServerMetadata', {});
    expect(sm.name).toBe('shardserve');
    expect(sm.extensions).toContain('binary_tensor_data');
    const mm = await call(client, 'ModelMetadata', { name: 'net' });
    expect(mm).toEqual({
      name: 'net', versions: ['1'], platform: 'onnxruntime_onnx',
      inputs: [{ name: 'x', datatype: 'FP32', shape: ['-1', '16'] }],
      outputs: [{ name: 'y', datatype: 'FP32', shape: ['-1', '8'] }],
    });
  });

  it('infers from typed contents (fp32_contents) as well as raw contents', async () => {
    const res = await call(client, 'ModelInfer', { model_name: 'net', inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 16], contents: { fp32_contents: Array.from(x) } }] });
    expect(Buffer.compare(res.raw_output_contents[0], expected)).toBe(0);
  });

  const bad: Array<[string, () => unknown, number, RegExp]> = [
    ['unknown model', () => ({ ...goodGrpc(), model_name: 'nope' }), status.NOT_FOUND, /model 'nope' is not served here \(this server serves 'net'\)/],
    ['unknown version', () => ({ ...goodGrpc(), model_version: '7' }), status.NOT_FOUND, /no version '7'/],
    ['wrong input name', () => ({ ...goodGrpc(), inputs: [{ name: 'input', datatype: 'FP32', shape: [2, 16] }] }), status.INVALID_ARGUMENT, /unexpected input 'input' for model 'net' \(expected inputs: x\)/],
    ['wrong dtype', () => ({ ...goodGrpc(), inputs: [{ name: 'x', datatype: 'FP64', shape: [2, 8] }] }), status.INVALID_ARGUMENT, /input 'x': datatype FP64 does not match the model's FP32/],
    ['wrong shape', () => ({ ...goodGrpc(), inputs: [{ name: 'x', datatype: 'FP32', shape: [4, 8] }] }), status.INVALID_ARGUMENT, /input 'x': shape \[4,8\] does not match the model's \[-1,16\]/],
    ['data size not matching the shape', () => ({ ...goodGrpc(), inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 16] }] }), status.INVALID_ARGUMENT, /input 'x': 128 bytes of data, shape \[1,16\] of FP32 needs 64/],
    ['missing input', () => ({ model_name: 'net', inputs: [] }), status.INVALID_ARGUMENT, /missing input\(s\) 'x'/],
    ['unknown output requested', () => ({ ...goodGrpc(), outputs: [{ name: 'z' }] }), status.INVALID_ARGUMENT, /unknown output 'z' requested \(model outputs: y\)/],
    ['raw contents count not matching the inputs', () => ({ ...goodGrpc(), inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 16] }, { name: 'x2', datatype: 'FP32', shape: [1] }] }), status.INVALID_ARGUMENT, /raw_input_contents has 1 entries for 2 inputs/],
    ['oversize message', () => {
      const big = new Float32Array(MAX / 4 + 16);
      return { model_name: 'net', inputs: [{ name: 'x', datatype: 'FP32', shape: [big.length / 16, 16] }], raw_input_contents: [Buffer.from(big.buffer)] };
    }, status.INVALID_ARGUMENT, new RegExp(`over the limit of ${MAX} bytes`)],
  ];
  for (const [name, request, code, message] of bad) {
    it(`rejects ${name} with a specific error and keeps serving`, async () => {
      const err: any = await call(client, 'ModelInfer', request()).then(() => undefined, (e) => e);
      expect(err, 'the request must fail').toBeDefined();
      expect({ code: err.code, details: err.details }).toMatchObject({ code, details: expect.stringMatching(message) });
      const ok = await call(client, 'ModelInfer', goodGrpc());
      expect(Buffer.compare(ok.raw_output_contents[0], expected)).toBe(0);
    });
  }

  it('answers grpc.health.v1 Check with SERVING for the server and the OIP service', async () => {
    const health = new (services().health)(group.grpcAddress, credentials.createInsecure()) as any;
    const check = (service: string) => new Promise<any>((resolve, reject) => health.Check({ service }, (e: any, r: any) => (e ? reject(e) : resolve(r))));
    expect(await check('')).toEqual({ status: 'SERVING' });
    expect(await check('inference.GRPCInferenceService')).toEqual({ status: 'SERVING' });
    await expect(check('other.Service')).rejects.toMatchObject({ code: status.NOT_FOUND });
    health.close();
  });
  it('streams grpc.health.v1 Watch: SERVING now, SERVICE_UNKNOWN for an unknown service', async () => {
    const health = new (services().health)(group.grpcAddress, credentials.createInsecure()) as any;
    const first = (service: string) => new Promise<any>((resolve, reject) => {
      const call = health.Watch({ service });
      call.once('data', (m: any) => {
        resolve(m);
        call.cancel();
      });
      call.once('error', (e: any) => (e.code === status.CANCELLED ? undefined : reject(e)));
    });
    expect(await first('')).toEqual({ status: 'SERVING' });
    expect(await first('other.Service')).toEqual({ status: 'SERVICE_UNKNOWN' });
    health.close();
  });
});

describe('REST /v2', () => {
  const get = async (path: string) => {
    const r = await fetch(group.httpBase + path);
    return { status: r.status, body: await r.json() };
  };
  const post = async (path: string, body: string | Uint8Array, headers: Record<string, string> = {}) => {
    const r = await fetch(group.httpBase + path, { method: 'POST', body: body as any, headers: { 'content-type': 'application/json', ...headers } });
    return { status: r.status, headers: r.headers, bytes: Buffer.from(await r.arrayBuffer()) };
  };

  it('answers health, readiness and metadata routes', async () => {
    expect(await get('/v2/health/live')).toEqual({ status: 200, body: { live: true } });
    expect(await get('/v2/health/ready')).toEqual({ status: 200, body: { ready: true } });
    expect((await get('/readyz')).body).toMatchObject({ ready: true, status: 'READY' });
    expect((await get('/healthz')).status).toBe(200);
    expect(await get('/v2/models/net/ready')).toEqual({ status: 200, body: { name: 'net', ready: true } });
    expect((await get('/v2')).body).toMatchObject({ name: 'shardserve', version: '0.1.0' });
    expect(await get('/v2/models/net')).toEqual({ status: 200, body: {
      name: 'net', versions: ['1'], platform: 'onnxruntime_onnx',
      inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 16] }], outputs: [{ name: 'y', datatype: 'FP32', shape: [-1, 8] }],
    } });
    expect(await get('/v2/models/other')).toEqual({ status: 404, body: { error: "model 'other' is not served here (this server serves 'net')" } });
  });

  it('infers from JSON data and returns JSON data equal to single-device onnxruntime', async () => {
    const r = await post('/v2/models/net/infer', JSON.stringify({ id: 'j1', inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 16], data: Array.from(x) }] }));
    expect(r.status).toBe(200);
    const body = JSON.parse(r.bytes.toString());
    expect(body).toMatchObject({ model_name: 'net', id: 'j1', outputs: [{ name: 'y', datatype: 'FP32', shape: [2, 8] }] });
    expect(Buffer.compare(Buffer.from(new Float32Array(body.outputs[0].data).buffer), expected)).toBe(0);
  });

  it('infers with the binary tensor data extension both ways', async () => {
    const header = Buffer.from(JSON.stringify({
      inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 16], parameters: { binary_data_size: x.byteLength } }],
      outputs: [{ name: 'y', parameters: { binary_data: true } }],
    }));
    const r = await post('/v2/models/net/infer', Buffer.concat([header, Buffer.from(x.buffer)]), {
      'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length),
    });
    expect(r.status).toBe(200);
    const jsonLength = Number(r.headers.get('inference-header-content-length'));
    const json = JSON.parse(r.bytes.subarray(0, jsonLength).toString());
    expect(json.outputs).toEqual([{ name: 'y', datatype: 'FP32', shape: [2, 8], parameters: { binary_data_size: 64 } }]);
    expect(Buffer.compare(r.bytes.subarray(jsonLength), expected)).toBe(0);
  });

  const bad: Array<[string, () => string | Uint8Array, number, RegExp]> = [
    ['malformed JSON', () => '{"inputs": [', 400, /request body is not valid JSON/],
    ['JSON without inputs', () => '{"id": "a"}', 400, /must be an object with an "inputs" array/],
    ['wrong input name', () => JSON.stringify({ inputs: [{ name: 'input0', datatype: 'FP32', shape: [2, 16], data: Array.from(x) }] }), 400, /unexpected input 'input0'/],
    ['wrong shape', () => JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [16, 2], data: Array.from(x) }] }), 400, /shape \[16,2\] does not match/],
    ['wrong dtype', () => JSON.stringify({ inputs: [{ name: 'x', datatype: 'INT32', shape: [2, 16], data: Array.from(x, () => 1) }] }), 400, /datatype INT32 does not match the model's FP32/],
    ['unknown dtype', () => JSON.stringify({ inputs: [{ name: 'x', datatype: 'FLOAT', shape: [2, 16], data: [] }] }), 400, /unsupported or missing datatype 'FLOAT'/],
    ['data count not matching the shape', () => JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 16], data: [1, 2, 3] }] }), 400, /data has 3 elements, shape \[2,16\] needs 32/],
    ['non-numeric data', () => JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 16], data: Array.from({ length: 16 }, () => 'a') }] }), 400, /element 0 of data is not a number/],
    ['oversize body', () => JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 16], data: Array.from({ length: 400_000 }, () => 1.5) }] }), 400, /over the limit of/],
  ];
  for (const [name, body, code, message] of bad) {
    it(`rejects ${name} with ${code} and a message, and keeps serving`, async () => {
      const r = await post('/v2/models/net/infer', body());
      expect(r.status).toBe(code);
      expect(JSON.parse(r.bytes.toString()).error).toMatch(message);
      const ok = await call(client, 'ModelInfer', goodGrpc());
      expect(Buffer.compare(ok.raw_output_contents[0], expected)).toBe(0);
    });
  }

  it('answers an inference request for another model with 404 naming both models, whatever its body', async () => {
    for (const body of ['{}', '{"inputs": [', JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 16], data: Array.from(x) }] })]) {
      const r = await post('/v2/models/other/infer', body);
      expect({ status: r.status, body: JSON.parse(r.bytes.toString()) }).toEqual({ status: 404, body: { error: "model 'other' is not served here (this server serves 'net')" } });
    }
    const v = await post('/v2/models/net/versions/7/infer', '{}');
    expect({ status: v.status, body: JSON.parse(v.bytes.toString()) }).toEqual({ status: 404, body: { error: "model 'net' has no version '7' (versions: 1)" } });
  });

  it('exposes Prometheus metrics: request counts, per-stage latency, load progress', async () => {
    const text = await (await fetch(group.httpBase + '/metrics')).text();
    const sample = (name: string, labels: Record<string, string>) => {
      const line = text.split('\n').find((l) => l.startsWith(name + '{') && Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)));
      expect(line, `${name} ${JSON.stringify(labels)}`).toBeDefined();
      return Number(line!.split(' ').pop());
    };
    expect(sample('shardserve_requests_total', { protocol: 'grpc', code: 'OK', rank: '0' })).toBeGreaterThan(5);
    expect(sample('shardserve_requests_total', { protocol: 'http', code: 'InvalidArgument' })).toBeGreaterThan(5);
    expect(sample('shardserve_requests_total', { protocol: 'grpc', code: 'NotFound' })).toBe(2);
    expect(sample('shardserve_stage_compute_seconds_count', { stage: '0' })).toBeGreaterThan(5);
    expect(sample('shardserve_stage_hop_seconds_count', { to_stage: '1' })).toBeGreaterThan(5);
    expect(sample('shardserve_load_bytes_done', { rank: '0' })).toBeGreaterThan(0);
    expect(sample('shardserve_ready', { rank: '0' })).toBe(1);
  });
});
