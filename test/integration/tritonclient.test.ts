import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { transformerNetwork } from '../../core/onnx/sample-networks.js';
import { ensurePythonVenv, runPython } from '../harness/python.js';
import { singleDeviceOutputs, writeServeFixture } from './serve-fixture.js';
import { freePortBlock, freePorts } from '../harness/ports.js';
import { bytesOf } from './serve-models.js';

// A real Open Inference Protocol client (tritonclient, gRPC and HTTP) against `shardserve up`
// serving a 2-stage transformer encoder from its sharded checkpoint.
const ROOT = join(import.meta.dirname, '..', '..');
const net = transformerNetwork();
const sample = net.sampleInput(2).x;
let up: ChildProcess;
let upOutput = '';
let result: any;
let expected: Record<string, ort.Tensor>;

beforeAll(async () => {
  await ensurePythonVenv(); // fails loudly when the venv cannot be built
  const dir = mkdtempSync(join(tmpdir(), 'tritonclient-'));
  const f = writeServeFixture(join(dir, 'fixture'), net, 2);
  const [grpc, http] = await freePorts(2);
  const rankPort = await freePortBlock(2);
  up = spawn(process.execPath, [join(ROOT, 'bin', 'shardserve.mjs'), 'up', '--model', f.model, '--checkpoint', f.checkpoint, '--strategy', f.strategy,
    '--port', String(grpc), '--http-port', String(http), '--rank-port', String(rankPort), '--name', 'encoder'], { stdio: ['ignore', 'pipe', 'pipe'] });
  up.stdout!.on('data', (d) => (upOutput += d));
  up.stderr!.on('data', (d) => (upOutput += d));
  const until = Date.now() + 120_000;
  for (;;) {
    const ok = await fetch(`http://127.0.0.1:${http}/v2/health/ready`).then((r) => r.status === 200, () => false);
    if (ok) break;
    if (Date.now() > until || up.exitCode !== null) throw new Error(`shardserve up did not become ready:\n${upOutput}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  writeFileSync(join(dir, 'x.bin'), Buffer.from(sample.data.buffer));
  const { stdout } = await runPython(join(import.meta.dirname, 'tritonclient_oip.py'),
    [`127.0.0.1:${grpc}`, `127.0.0.1:${http}`, 'encoder', 'x', join(dir, 'x.bin'), JSON.stringify(sample.dims)], { timeoutMs: 120_000 });
  result = JSON.parse(stdout);
  expected = await singleDeviceOutputs(net, { x: new ort.Tensor('float32', sample.data, sample.dims) });
}, 300_000);

afterAll(async () => {
  if (up && up.exitCode === null) {
    const exited = new Promise((r) => up.once('exit', r));
    up.kill('SIGTERM');
    await exited;
  }
});

const b64 = (t: ort.Tensor) => bytesOf(t).toString('base64');

describe('tritonclient (gRPC) against shardserve up', () => {
  it('sees a live, ready server and model', () => {
    expect([result.grpc.live, result.grpc.ready, result.grpc.model_ready]).toEqual([true, true, true]);
    expect(result.grpc.server).toMatchObject({ name: 'shardserve', version: '0.1.0' });
  });
  it('reads the model metadata', () => {
    expect(result.grpc.model).toEqual({
      name: 'encoder', versions: ['1'], platform: 'onnxruntime_onnx',
      inputs: [{ name: 'x', datatype: 'FP32', shape: ['-1', '8', '16'] }],
      outputs: [{ name: 'y', datatype: 'FP32', shape: ['-1', '8', '16'] }, { name: 'blocks.0.h', datatype: 'FP32', shape: ['-1', '8', '16'] }],
    });
  });
  it('gets outputs equal bit for bit to the merged single-device model, with its request id', () => {
    expect(result.grpc.id).toBe('triton-grpc-1');
    for (const name of ['y', 'blocks.0.h']) {
      expect(result.grpc.outputs[name]).toEqual({ shape: [2, 8, 16], b64: b64(expected[name]) });
    }
  });
  it('gets NOT_FOUND for an unknown model and INVALID_ARGUMENT for a wrong input name', () => {
    expect(result.grpc.unknown_model).toEqual({ status: 'StatusCode.NOT_FOUND', message: "model 'no-such-model' is not served here (this server serves 'encoder')" });
    expect(result.grpc.wrong_input).toEqual({ status: 'StatusCode.INVALID_ARGUMENT', message: "unexpected input 'not_x' for model 'encoder' (expected inputs: x)" });
  });
});

describe('tritonclient (HTTP) against shardserve up', () => {
  it('sees a live, ready server and model, and its metadata', () => {
    expect([result.http.live, result.http.ready, result.http.model_ready]).toEqual([true, true, true]);
    expect(result.http.model.inputs).toEqual([{ name: 'x', datatype: 'FP32', shape: [-1, 8, 16] }]);
    expect(result.http.server).toMatchObject({ name: 'shardserve' });
  });
  it('gets exact outputs with binary tensor data and with JSON data', () => {
    for (const mode of ['binary', 'json']) {
      for (const name of ['y', 'blocks.0.h']) {
        expect(result.http[mode][name], `${mode} ${name}`).toEqual({ shape: [2, 8, 16], b64: b64(expected[name]) });
      }
    }
  });
  it('gets 404 for an unknown model and 400 for a wrong shape, with the messages', () => {
    expect(result.http.unknown_model).toEqual({ status: '404', message: "model 'no-such-model' is not served here (this server serves 'encoder')" });
    expect(result.http.wrong_shape).toEqual({ status: '400', message: "input 'x': shape [1,1] does not match the model's [-1,8,16] (-1 = any size)" });
  });
});
