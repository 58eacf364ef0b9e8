// Pipeline cuts must not change the arithmetic: running the stages one after another through
// onnxruntime-node gives outputs BITWISE equal to onnxruntime on the whole model, for an MLP and a
// transformer-style encoder (layer norm, attention matmuls, residuals crossing stage boundaries, a
// skip from the input to the output, an output produced in the first stage), cut into 1, 2 and 4
// stages by parameter stages, by cut tensors, and with weights in ONNX external data.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { buildStageModel } from '../../core/onnx/bind.js';
import { type Feeds, checkStageLoads, runModel, runStagesInSequence, tensorBytes } from '../../core/onnx/ort-run.js';
import { planPipeline } from '../../core/onnx/partition.js';
import { GraphBuilder } from '../../core/onnx/graph-builder.js';
import { type SampleNetwork, mlpNetwork, transformerNetwork } from '../../core/onnx/sample-networks.js';

const tmp = mkdtempSync(join(tmpdir(), 'shardserve-onnx-pipeline-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function feedsOf(net: SampleNetwork, batch: number): Feeds {
  return Object.fromEntries(Object.entries(net.sampleInput(batch)).map(([k, v]) => [k, new ort.Tensor('float32', v.data, v.dims)]));
}

async function wholeModelOutputs(net: SampleNetwork, feeds: Feeds): Promise<Feeds> {
  const plan = planPipeline(net.model, { stages: 1, stageOfInitializer: net.stageOf(1) });
  return runModel(buildStageModel(net.model, plan, 0, net.weights), feeds);
}

function expectBitwiseEqual(got: Feeds, want: Feeds): void {
  expect(Object.keys(got)).toEqual(Object.keys(want));
  for (const name of Object.keys(want)) {
    expect(got[name].dims, name).toEqual(want[name].dims);
    expect(Buffer.from(tensorBytes(got[name])).equals(Buffer.from(tensorBytes(want[name]))), `${name} differs`).toBe(true);
  }
}

const networks: Array<[string, () => SampleNetwork]> = [['MLP', () => mlpNetwork()], ['transformer block', () => transformerNetwork()]];

describe.each(networks)('%s', (_name, make) => {
  const net = make();

  it.each([1, 2, 4])('cut by parameter stages into %i stage(s) equals the whole model bitwise', async (stages) => {
    const feeds = feedsOf(net, 3);
    const want = await wholeModelOutputs(net, feeds);
    const plan = planPipeline(net.model, { stages, stageOfInitializer: net.stageOf(stages) });
    expect(plan.stages).toHaveLength(stages);
    const models = plan.stages.map((s) => buildStageModel(net.model, plan, s.stage, net.weights));
    for (const s of plan.stages) await checkStageLoads(models[s.stage], s, `stage${s.stage}.onnx`);
    expectBitwiseEqual(await runStagesInSequence(models, feeds), want);
  });

  it('gives stage weights only to the stage that reads them', () => {
    const plan = planPipeline(net.model, { stages: 4, stageOfInitializer: net.stageOf(4) });
    const all = plan.stages.flatMap((s) => s.parameters).sort();
    expect(all).toEqual([...net.weights.keys()].sort());
  });

  it('keeps a symbolic batch: the same stage models serve batch 1 and batch 5', async () => {
    const plan = planPipeline(net.model, { stages: 2, stageOfInitializer: net.stageOf(2) });
    const models = plan.stages.map((s) => buildStageModel(net.model, plan, s.stage, net.weights));
    for (const batch of [1, 5]) {
      const feeds = feedsOf(net, batch);
      expectBitwiseEqual(await runStagesInSequence(models, feeds), await wholeModelOutputs(net, feeds));
    }
  });
});

describe('transformer block cut by explicit tensors', () => {
  it('cut inside attention and inside the MLP equals the whole model bitwise', async () => {
    const net = transformerNetwork();
    const feeds = feedsOf(net, 2);
    const plan = planPipeline(net.model, { stages: 4, cutTensors: ['blocks.0.probs', 'blocks.0.fc1b', 'blocks.1.ctx'], stageOfInitializer: net.stageOf(4) });
    const models = plan.stages.map((s) => buildStageModel(net.model, plan, s.stage, net.weights));
    expectBitwiseEqual(await runStagesInSequence(models, feeds), await wholeModelOutputs(net, feeds));
  });
});

describe('stage weights in ONNX external data', () => {
  it('stages loaded by path from external data equal the whole model bitwise', async () => {
    const net = transformerNetwork();
    const feeds = feedsOf(net, 2);
    const plan = planPipeline(net.model, { stages: 2, stageOfInitializer: net.stageOf(2) });
    const paths = plan.stages.map((s) => {
      const dir = join(tmp, `rank_${s.stage}`);
      const bytes = buildStageModel(net.model, plan, s.stage, net.weights, { externalDataDir: dir, externalDataThreshold: 4096 });
      writeFileSync(join(dir, 'model.onnx'), bytes);
      return join(dir, 'model.onnx');
    });
    expectBitwiseEqual(await runStagesInSequence(paths, feeds), await wholeModelOutputs(net, feeds));
  });
});

describe('control flow across a cut', () => {
  it('an If whose branches read a tensor of the previous stage runs the same split as whole', async () => {
    const branch = (name: string, op: string) => ({
      name,
      node: [{ input: ['h', 'b'], output: [`${name}_out`], opType: op }],
      output: [{ name: `${name}_out`, type: { tensorType: { elemType: 1, shape: { dim: [{ dimParam: 'n' }, { dimValue: 2 }] } } } }],
    });
    const model = new GraphBuilder('if').input('x', 'F32', ['n', 2]).input('flag', 'BOOL', [])
      .initializer('a', 'F32', [2, 2], new Float32Array(4)).initializer('b', 'F32', [2], new Float32Array(2))
      .node('MatMul', ['x', 'a'], ['h'])
      .node('If', ['flag'], ['y'], {}, [{ name: 'then_branch', type: 5, g: branch('then', 'Add') }, { name: 'else_branch', type: 5, g: branch('else', 'Sub') }])
      .output('y', 'F32', ['n', 2])
      .model();
    const f32 = (...v: number[]) => new Uint8Array(new Float32Array(v).buffer);
    const weights = new Map([['a', { dtype: 'F32' as const, shape: [2, 2], data: f32(1, 2, 3, 4) }], ['b', { dtype: 'F32' as const, shape: [2], data: f32(10, 20) }]]);
    const stageOf = (n: string) => ({ a: 0, b: 1 })[n as 'a' | 'b'];
    const split = planPipeline(model, { stages: 2, stageOfInitializer: stageOf });
    const whole = planPipeline(model, { stages: 1, stageOfInitializer: stageOf });
    for (const [flag, want] of [[true, [14, 26]], [false, [-6, -14]]] as const) {
      const feeds = { x: new ort.Tensor('float32', new Float32Array([1, 1]), [1, 2]), flag: new ort.Tensor('bool', new Uint8Array([flag ? 1 : 0]), []) };
      const got = await runStagesInSequence(split.stages.map((st) => buildStageModel(model, split, st.stage, weights)), feeds);
      expect(Array.from(got.y.data as Float32Array)).toEqual(want);
      expectBitwiseEqual(got, await runModel(buildStageModel(model, whole, 0, weights), feeds));
    }
  });
});
