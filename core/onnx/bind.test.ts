import { existsSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { ShardserveError } from '../errors.js';
import { type StageWeight, buildStageModel, buildStageModelInMemory } from './bind.js';
import { parseOnnx } from './model.js';
import { createSession, runModel, tensorBytes } from './ort-run.js';
import { planPipeline } from './partition.js';
import { mlpNetwork } from './sample-networks.js';

const tmp = mkdtempSync(join(tmpdir(), 'shardserve-bind-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function expectError(run: () => unknown, code: string, message: string, param: string): void {
  let caught: unknown;
  try {
    run();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(ShardserveError);
  expect((caught as ShardserveError).code).toBe(code);
  expect((caught as Error).message).toBe(message);
  expect((caught as ShardserveError).param).toBe(param);
}

const net = mlpNetwork();
const plan2 = planPipeline(net.model, { stages: 2, stageOfInitializer: net.stageOf(2) });
const feeds = () => ({ x: new ort.Tensor('float32', net.sampleInput(2).x.data, [2, 16]) });

function without(name: string): Map<string, StageWeight> {
  const m = new Map(net.weights);
  m.delete(name);
  return m;
}

describe('buildStageModel', () => {
  it('binds the checkpoint values as the stage initializers', () => {
    const stage = parseOnnx(buildStageModel(net.model, plan2, 1, net.weights));
    const inits = stage.graph!.initializer!;
    expect(inits.map((t) => t.name)).toEqual(['layers.2.weight', 'layers.2.bias', 'layers.3.weight', 'layers.3.bias']);
    expect(Buffer.from(inits[0].rawData!).equals(Buffer.from(net.weights.get('layers.2.weight')!.data))).toBe(true);
  });

  it('maps checkpoint names to initializer names through parameterNames', async () => {
    const renamed = new Map([...net.weights].map(([k, v]) => [`backbone.${k}`, v]));
    const parameterNames = Object.fromEntries([...net.weights.keys()].map((k) => [`backbone.${k}`, k]));
    const plan1 = planPipeline(net.model, { stages: 1, stageOfInitializer: net.stageOf(1) });
    const direct = await runModel(buildStageModel(net.model, plan1, 0, net.weights), feeds());
    const viaMap = await runModel(buildStageModel(net.model, plan1, 0, renamed, { parameterNames }), feeds());
    expect(tensorBytes(viaMap.y)).toEqual(tensorBytes(direct.y));
  });

  it.each([
    ['a missing weight', () => buildStageModel(net.model, plan2, 0, without('layers.1.bias'), { uri: 'mlp.onnx' }), 'MissingWeight',
      "mlp.onnx: no weight for initializer 'layers.1.bias' of stage 0: the rank's checkpoint slice has no parameter 'layers.1.bias' and parameterNames maps none to it", 'layers.1.bias'],
    ['a weight of the wrong shape', () => {
      const w = new Map(net.weights);
      w.set('layers.0.weight', { dtype: 'F32', shape: [8, 32], data: new Uint8Array(8 * 32 * 4) });
      return buildStageModel(net.model, plan2, 0, w);
    }, 'WeightMismatch', "model.onnx: weight for initializer 'layers.0.weight' has shape [8, 32], the graph expects [16, 32]", 'layers.0.weight'],
    ['a weight of the wrong dtype', () => {
      const w = new Map(net.weights);
      w.set('layers.3.bias', { dtype: 'F16', shape: [4], data: new Uint8Array(8) });
      return buildStageModel(net.model, plan2, 1, w);
    }, 'WeightMismatch', "model.onnx: weight for initializer 'layers.3.bias' is F16, the graph expects F32", 'layers.3.bias'],
    ['a weight whose bytes do not fill its shape', () => {
      const w = new Map(net.weights);
      w.set('layers.3.bias', { dtype: 'F32', shape: [4], data: new Uint8Array(12) });
      return buildStageModel(net.model, plan2, 1, w);
    }, 'WeightMismatch', "model.onnx: weight for initializer 'layers.3.bias' holds 12 bytes, expected 16 for F32[4]", 'layers.3.bias'],
    ['two checkpoint names mapped to one initializer', () => {
      const w = new Map(net.weights);
      w.set('old.bias', net.weights.get('layers.3.bias')!);
      return buildStageModel(net.model, plan2, 1, w, { parameterNames: { 'old.bias': 'layers.3.bias' } });
    }, 'WeightMismatch', "model.onnx: checkpoint parameters 'layers.3.bias' and 'old.bias' both map to initializer 'layers.3.bias'; fix parameterNames", 'layers.3.bias'],
  ])('rejects %s, naming the initializer', (_name, run, code, message, param) => {
    expectError(run, code, message, param);
  });

  it('ignores checkpoint entries of other stages and non-parameters (optimizer state)', () => {
    const w = new Map(net.weights);
    w.set('adam_m.layers.0.weight', net.weights.get('layers.0.weight')!);
    expect(parseOnnx(buildStageModel(net.model, plan2, 1, w)).graph!.initializer).toHaveLength(4);
  });

  it('replaces parameters whose source data is in external files, and refuses constants that are', () => {
    const model = structuredClone(net.model);
    for (const t of model.graph!.initializer!) {
      delete t.rawData;
      t.dataLocation = 1;
      t.externalData = [{ key: 'location', value: 'weights.bin' }];
    }
    const bound = parseOnnx(buildStageModel(model, plan2, 1, net.weights)).graph!.initializer!;
    expect(bound.every((t) => t.dataLocation === undefined && t.rawData!.byteLength > 0)).toBe(true);
    const constantPlan = planPipeline(model, { stages: 1 }); // no strategy: nothing is known to be a parameter
    expectError(() => buildStageModel(model, constantPlan, 0, new Map()), 'MissingWeight',
      "model.onnx: initializer 'layers.0.weight' keeps its data in an external file of the source model and no checkpoint weight replaces it", 'layers.0.weight');
  });

  it('refuses to embed weights past the threshold without an external-data directory', () => {
    expect(() => buildStageModel(net.model, plan2, 0, net.weights, { externalDataThreshold: 1000 }))
      .toThrow('model.onnx: stage 0 weights take 6400 bytes, over the 1000-byte limit for one ONNX protobuf; give externalDataDir so they go to an external-data file');
  });

  it('writes weights past the threshold to an external-data file that onnxruntime loads by path', async () => {
    const dir = join(tmp, 'external');
    const embedded = buildStageModel(net.model, plan2, 0, net.weights);
    const external = buildStageModel(net.model, plan2, 0, net.weights, { externalDataDir: dir, externalDataThreshold: 1000 });
    const graph = parseOnnx(external).graph!;
    const weight = graph.initializer!.find((t) => t.name === 'layers.1.weight')!;
    expect(weight.rawData).toBeUndefined();
    expect(weight.dataLocation).toBe(1);
    expect(weight.externalData).toEqual([
      { key: 'location', value: 'stage0.onnx.data' },
      { key: 'offset', value: '4096' },
      { key: 'length', value: String(32 * 32 * 4) },
    ]);
    // Small tensors (the biases) stay embedded.
    expect(graph.initializer!.find((t) => t.name === 'layers.1.bias')!.rawData!.byteLength).toBe(128);
    expect(readdirSync(dir)).toEqual(['stage0.onnx.data']);
    expect(statSync(join(dir, 'stage0.onnx.data')).size).toBe(4096 + 32 * 32 * 4);
    writeFileSync(join(dir, 'stage0.onnx'), external);
    const fromFile = await runModel(join(dir, 'stage0.onnx'), feeds());
    const fromBytes = await runModel(embedded, feeds());
    expect(tensorBytes(fromFile.act1)).toEqual(tensorBytes(fromBytes.act1));
    expect(existsSync(join(dir, 'stage0.onnx.data.tmp'))).toBe(false);
  });
});

describe('buildStageModelInMemory', () => {
  it('leaves each weight in its own buffer as in-memory external data, which onnxruntime runs exactly as the embedded model', async () => {
    const { onnx, externalData } = buildStageModelInMemory(net.model, plan2, 0, net.weights);
    const graph = parseOnnx(onnx).graph!;
    const weight = graph.initializer!.find((t) => t.name === 'layers.1.weight')!;
    expect(weight.rawData).toBeUndefined();
    const ref = externalData.find((e) => e.path === weight.externalData![0].value)!;
    expect(weight.externalData).toEqual([
      { key: 'location', value: ref.path },
      { key: 'offset', value: '0' },
      { key: 'length', value: String(32 * 32 * 4) },
    ]);
    // The slice's own bytes, not a copy; small tensors (the biases) stay embedded.
    expect(ref.data).toBe(net.weights.get('layers.1.weight')!.data);
    expect(graph.initializer!.find((t) => t.name === 'layers.1.bias')!.rawData!.byteLength).toBe(128);
    expect(new Set(externalData.map((e) => e.path)).size).toBe(externalData.length);
    // The protobuf carries no large weight: far smaller than the embedded model.
    const embedded = buildStageModel(net.model, plan2, 0, net.weights);
    expect(onnx.byteLength).toBeLessThan(embedded.byteLength - externalData.reduce((a, e) => a + e.data.byteLength, 0) + 1024);
    const session = await createSession(onnx, { externalData });
    const inMemory = await session.run(feeds());
    const fromBytes = await runModel(embedded, feeds());
    expect(tensorBytes(inMemory.act1)).toEqual(tensorBytes(fromBytes.act1));
    await session.release();
  });

  it('checks the weights as buildStageModel does', () => {
    expectError(() => buildStageModelInMemory(net.model, plan2, 0, without('layers.0.weight')), 'MissingWeight',
      "model.onnx: no weight for initializer 'layers.0.weight' of stage 0: the rank's checkpoint slice has no parameter 'layers.0.weight' and parameterNames maps none to it", 'layers.0.weight');
  });
});
