// A sharded checkpoint on disk for the serving suites: the sample network's ONNX graph, a MindSpore
// JSON pipeline strategy (one device per stage) and rank_<s>/model.safetensors holding only stage s's
// parameters — what pipeline-parallel training leaves behind — plus the single-device oracle.
import * as ort from 'onnxruntime-node';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DecryptionMode } from '../../core/checkpoint/types.js';
import { createTensorFileWriter } from '../../core/checkpoint/writer.js';
import { encryptCkpt } from '../../core/ckpt/record-builder.js';
import type { RankConfig } from '../../core/deployment.js';
import { buildStageModel } from '../../core/onnx/bind.js';
import { serializeOnnx } from '../../core/onnx/model.js';
import { planPipeline } from '../../core/onnx/partition.js';
import type { SampleNetwork } from '../../core/onnx/sample-networks.js';
import type { StageWeight } from '../../core/onnx/bind.js';
import type { ParamLayout, Strategy } from '../../core/strategy/types.js';
import { strategyToJson } from '../../core/strategy/writer.js';
import { sessionOptions } from '../../runtime-image/pipeline/stage-session.js';
import { call, oipClient } from './serve-client.js';
import { bytesOf } from './serve-models.js';

/** safetensors: u64 LE header length, JSON header, then the tensors' bytes. */
function safetensors(tensors: Array<[string, StageWeight]>): Buffer {
  const header: Record<string, unknown> = {};
  let offset = 0;
  for (const [name, t] of tensors) {
    header[name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  return Buffer.concat([len, Buffer.from(json), ...tensors.map(([, t]) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength))]);
}

export function writeSafetensors(path: string, tensors: Array<[string, StageWeight]>): void {
  writeFileSync(path, safetensors(tensors));
}

export interface ServeFixture {
  dir: string;
  model: string;
  checkpoint: string;
  strategy: string;
  stages: number;
}

/** The weights stage `s` of `stages` holds: what rank s's checkpoint file holds. */
function stageWeights(net: SampleNetwork, stages: number, s: number): Array<[string, StageWeight]> {
  const stageOf = net.stageOf(stages);
  return [...net.weights].filter(([name]) => (stageOf(name) ?? 0) === s);
}

export function writeServeFixture(dir: string, net: SampleNetwork, stages: number): ServeFixture {
  const stageOf = net.stageOf(stages);
  const layout = (shape: number[]): ParamLayout => ({
    devMatrix: [1], tensorMap: shape.map(() => -1), paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0, tensorShape: shape,
  });
  const strategy: Strategy = { uri: join(dir, 'strategy.json'), stageCount: stages, stageDevices: 1, params: new Map() };
  for (const [name, w] of net.weights) {
    const s = stageOf(name) ?? 0;
    strategy.params.set(name, { name, stages: [s], layoutByStage: new Map([[s, layout(w.shape)]]) });
  }
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'net.onnx'), serializeOnnx(net.model));
  writeFileSync(join(dir, 'strategy.json'), strategyToJson(strategy));
  for (let s = 0; s < stages; s++) {
    mkdirSync(join(dir, 'ckpt', `rank_${s}`), { recursive: true });
    writeFileSync(join(dir, 'ckpt', `rank_${s}`, 'model.safetensors'), safetensors(stageWeights(net, stages, s)));
  }
  return { dir, model: join(dir, 'net.onnx'), checkpoint: join(dir, 'ckpt'), strategy: join(dir, 'strategy.json'), stages };
}

/**
 * Replaces every rank's safetensors file with a MindSpore .ckpt of the same tensors, encrypted as
 * save_checkpoint(enc_key=key, enc_mode=mode) writes it (rank_<s>/model.ckpt).
 */
export async function encryptServeFixture(f: ServeFixture, net: SampleNetwork, key: Uint8Array, mode: DecryptionMode): Promise<void> {
  for (let s = 0; s < f.stages; s++) {
    const own = stageWeights(net, f.stages, s);
    const dir = join(f.checkpoint, `rank_${s}`);
    const plain = join(dir, 'plain.ckpt');
    const w = await createTensorFileWriter(plain, 'mindspore-ckpt', own.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape })));
    for (const [name, t] of own) await w.writeAt(name, 0, t.data);
    await w.commit();
    writeFileSync(join(dir, 'model.ckpt'), encryptCkpt(readFileSync(plain), key, mode));
    rmSync(plain);
    rmSync(join(dir, 'model.safetensors'));
  }
}

/**
 * Adds to every rank file what ModelCheckpoint saves besides the weights when training with Adam:
 * each weight's two moments (other bytes, same shape) and a step counter, none of them in the
 * strategy. Returns the weights' bytes per stage.
 */
export function addTrainingStates(f: ServeFixture, net: SampleNetwork): number[] {
  const own = (s: number) => stageWeights(net, f.stages, s);
  for (let s = 0; s < f.stages; s++) {
    const moments = own(s).flatMap(([name, w]) => ['moment1', 'moment2'].map((m): [string, StageWeight] => [`${m}.${name}`, { ...w, data: w.data.map((b) => b ^ 0x5a) }]));
    writeSafetensors(join(f.checkpoint, `rank_${s}`, 'model.safetensors'), [...own(s), ...moments, ['global_step', { dtype: 'I32', shape: [1], data: new Uint8Array(4) }]]);
  }
  return Array.from({ length: f.stages }, (_, s) => own(s).reduce((sum, [, w]) => sum + w.data.byteLength, 0));
}

export function fixtureConfig(f: ServeFixture, ports: { grpc: number; http: number; rank: number }, modelName = 'net'): RankConfig {
  return {
    modelName,
    model: { uri: f.model },
    checkpoint: { uri: f.checkpoint, strategy: f.strategy },
    parallelism: { pipelineStages: f.stages, tensorParallel: 1 },
    serving: { grpcPort: ports.grpc, httpPort: ports.http, rankPort: ports.rank },
  };
}

/**
 * One ModelInfer (a batch of `batch` sample inputs, raw contents) to the OIP gRPC front door at
 * `address`; true when the output's bytes equal single-device onnxruntime's.
 */
export async function servesExactly(address: string, modelName: string, net: SampleNetwork, batch = 2): Promise<boolean> {
  const input = net.sampleInput(batch).x;
  const expected = await singleDeviceOutputs(net, { x: new ort.Tensor('float32', input.data, input.dims) });
  const client = oipClient(address);
  try {
    const res = await call(client, 'ModelInfer', { model_name: modelName, inputs: [{ name: 'x', datatype: 'FP32', shape: input.dims }], raw_input_contents: [Buffer.from(input.data.buffer)] });
    return Buffer.compare(res.raw_output_contents[0], bytesOf(expected.y)) === 0;
  } finally {
    client.close();
  }
}

/** onnxruntime on the whole network with every weight bound (the merged single-device model). */
export async function singleDeviceOutputs(net: SampleNetwork, feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.Tensor>> {
  const plan = planPipeline(net.model, { stages: 1 });
  const merged = buildStageModel(net.model, plan, 0, net.weights);
  const session = await ort.InferenceSession.create(merged, sessionOptions());
  try {
    return await session.run(feeds);
  } finally {
    await session.release();
  }
}
