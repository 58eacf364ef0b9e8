import * as ort from 'onnxruntime-node';
import { afterAll, describe, expect, it } from 'vitest';
import { bytesOf, cutByNodes, mlpModel, runSingleDevice, transformerBlockModel } from './serve-models.js';
import { call, oipClient, startInProcessGroup, type InProcessGroup } from './serve-client.js';
import { mkdtempSync, readFileSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { seededFloats } from '../../core/onnx/graph-builder.js';
import { mlpNetwork, transformerNetwork } from '../../core/onnx/sample-networks.js';
import { loadCheckpointStage, planFor } from '../../runtime-image/load-stage.js';
import { parseOnnx } from '../../core/onnx/model.js';
import { loadStrategy } from '../../core/reshard/session.js';
import { positionOf } from '../../runtime-image/pipeline/spec.js';
import { addTrainingStates, fixtureConfig, singleDeviceOutputs, writeServeFixture } from './serve-fixture.js';

// Distributed outputs equal onnxruntime on the whole single-device model, bit for bit, for every cut.
const cases = [
  { name: 'MLP on 1 stage', model: mlpModel, cuts: [], input: 'x', shape: [3, 16] },
  { name: 'MLP on 2 stages', model: mlpModel, cuts: [6], input: 'x', shape: [3, 16] },
  { name: 'MLP on 4 stages', model: mlpModel, cuts: [3, 6, 9], input: 'x', shape: [3, 16] },
  { name: 'transformer block on 1 stage', model: transformerBlockModel, cuts: [], input: 'x', shape: [2, 4, 16] },
  { name: 'transformer block on 2 stages (residual x crosses the cut)', model: transformerBlockModel, cuts: [3], input: 'x', shape: [2, 4, 16] },
  { name: 'transformer block on 4 stages (residual h skips stage 2)', model: transformerBlockModel, cuts: [2, 5, 8], input: 'x', shape: [2, 4, 16] },
];

describe('pipeline ranks answer exactly what one onnxruntime session answers', () => {
  const groups: InProcessGroup[] = [];
  afterAll(async () => {
    await Promise.all(groups.map((g) => g.stop()));
  });

  for (const c of cases) {
    it(c.name, async () => {
      const model = c.model();
      const { spec, stageModels } = cutByNodes(model, c.cuts);
      const group = await startInProcessGroup(spec, stageModels);
      groups.push(group);
      const n = c.shape.reduce((a, b) => a * b, 1);
      const x = seededFloats(n, 77, 2);
      const expected = await runSingleDevice(model, { [c.input]: new ort.Tensor('float32', x, c.shape) });
      const outName = spec.modelOutputs[0].name;
      const client = oipClient(group.grpcAddress);
      const res = await call(client, 'ModelInfer', {
        model_name: 'net',
        id: 'req-1',
        inputs: [{ name: c.input, datatype: 'FP32', shape: c.shape }],
        raw_input_contents: [Buffer.from(x.buffer)],
      });
      client.close();
      expect(res.id).toBe('req-1');
      expect(res.outputs.map((o: any) => [o.name, o.datatype, o.shape.map(Number)])).toEqual([[outName, 'FP32', [...expected[outName].dims]]]);
      expect(Buffer.compare(res.raw_output_contents[0], bytesOf(expected[outName]))).toBe(0);
    });
  }

  it('keeps many requests in flight through 4 stages and answers each with its own result', async () => {
    const model = mlpModel();
    const { spec, stageModels } = cutByNodes(model, [3, 6, 9]);
    const group = await startInProcessGroup(spec, stageModels, { window: 4 });
    groups.push(group);
    const client = oipClient(group.grpcAddress);
    const inputs = Array.from({ length: 24 }, (_, i) => seededFloats(16, 1000 + i, 1));
    const [results, expected] = await Promise.all([
      Promise.all(inputs.map((x, i) => call(client, 'ModelInfer', {
        model_name: 'net', id: `r${i}`,
        inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 16] }],
        raw_input_contents: [Buffer.from(x.buffer)],
      }))),
      Promise.all(inputs.map((x) => runSingleDevice(model, { x: new ort.Tensor('float32', x, [1, 16]) }))),
    ]);
    client.close();
    results.forEach((r, i) => {
      expect(r.id).toBe(`r${i}`);
      expect(Buffer.compare(r.raw_output_contents[0], bytesOf(expected[i].y))).toBe(0);
    });
  });
});

describe('ranks loading their slice from a sharded checkpoint answer like the merged single-device model', () => {
  const groups: InProcessGroup[] = [];
  afterAll(async () => {
    await Promise.all(groups.map((g) => g.stop()));
  });
  const nets = [
    ['MLP', () => mlpNetwork()],
    ['transformer encoder (residuals cross every cut, an output produced in stage 0)', () => transformerNetwork()],
    ['MLP with 256 KiB weights (left unread in the model), one of them a constant of the model, not of the checkpoint', mlpWithConstant],
  ] as const;
  for (const [label, makeNet] of nets) {
    for (const stages of [1, 2, 4]) {
      it(`${label} on ${stages} stage${stages > 1 ? 's' : ''}`, async () => {
        const net = makeNet();
        const fixture = writeServeFixture(mkdtempSync(join(tmpdir(), 'serve-ckpt-')), net, stages);
        const group = await startInProcessGroup({} as any, new Array(stages).fill(new Uint8Array()), {
          loader: loadCheckpointStage,
          configOf: (ports) => fixtureConfig(fixture, ports),
        });
        groups.push(group);
        const feeds = Object.fromEntries(Object.entries(net.sampleInput(3)).map(([k, v]) => [k, new ort.Tensor('float32', v.data, v.dims)]));
        const expected = await singleDeviceOutputs(net, feeds);
        const client = oipClient(group.grpcAddress);
        const names = Object.keys(feeds);
        const res = await call(client, 'ModelInfer', {
          model_name: 'net',
          inputs: names.map((n) => ({ name: n, datatype: 'FP32', shape: feeds[n].dims })),
          raw_input_contents: names.map((n) => bytesOf(feeds[n])),
        });
        client.close();
        const outNames = res.outputs.map((o: any) => o.name);
        expect(outNames.sort()).toEqual(Object.keys(expected).sort());
        res.outputs.forEach((o: any, i: number) => {
          expect(o.shape.map(Number)).toEqual([...expected[o.name].dims]);
          expect(Buffer.compare(res.raw_output_contents[i], bytesOf(expected[o.name])), `output ${o.name}`).toBe(0);
        });
      });
    }
  }

  it('a rank\'s load reports its own slice\'s bytes and where the checkpoint load\'s time went', async () => {
    const net = mlpNetwork();
    const fixture = writeServeFixture(mkdtempSync(join(tmpdir(), 'serve-ckpt-')), net, 2);
    const loaded = await loadCheckpointStage(fixtureConfig(fixture, { grpc: 0, http: 0, rank: 0 }), positionOf(1, 2, 1), () => undefined);
    const stageOf = net.stageOf(2);
    const own = [...net.weights].filter(([name]) => stageOf(name) === 1).reduce((sum, [, w]) => sum + w.data.byteLength, 0);
    expect(own).toBeGreaterThan(0);
    expect(loaded.sliceBytes).toBe(own);
    expect(loaded.checkpointMs!.plan).toBeGreaterThan(0);
    expect(loaded.checkpointMs!.reads).toBeGreaterThan(0);
  });
});

describe('a rank reads only the tensors its network uses', () => {
  it('not the optimizer states and counters a training checkpoint also holds (they are in no strategy)', async () => {
    const net = mlpNetwork();
    const fixture = writeServeFixture(mkdtempSync(join(tmpdir(), 'serve-ckpt-')), net, 2);
    const weightBytes = addTrainingStates(fixture, net);
    for (const stage of [0, 1]) {
      const loaded = await loadCheckpointStage(fixtureConfig(fixture, { grpc: 0, http: 0, rank: 0 }), positionOf(stage, 2, 1), () => undefined);
      expect(loaded.sliceBytes).toBe(weightBytes[stage]);
    }
  });
});

/** An MLP whose large weights (layers.1 and .2, 256 KiB each) the model file carries, as every export does; layers.2.weight is in no checkpoint. */
function mlpWithConstant() {
  const net = mlpNetwork([16, 256, 256, 256, 4]);
  const weights = new Map(net.weights);
  weights.delete('layers.2.weight');
  return { ...net, weights };
}

describe('a rank reads of the model file its graph and its own stage\'s constants', () => {
  it('not the weights its checkpoint slice replaces, nor the other stages\'', async () => {
    const net = mlpWithConstant();
    const fixture = writeServeFixture(mkdtempSync(join(tmpdir(), 'serve-ckpt-')), net, 2);
    const modelBytes = statSync(fixture.model).size;
    const constant = 256 * 256 * 4;
    const rchar = () => Number(/^rchar:\s+(\d+)/m.exec(readFileSync('/proc/self/io', 'utf8'))![1]);
    const config = fixtureConfig(fixture, { grpc: 0, http: 0, rank: 0 });
    const plan = planFor(parseOnnx(readFileSync(fixture.model)), await loadStrategy(fixture.strategy), config, 2);
    const stageOfConstant = plan.stages.findIndex((s) => s.initializers.includes('layers.2.weight'));
    expect(stageOfConstant).toBeGreaterThanOrEqual(0);
    for (const stage of [0, 1]) {
      const before = rchar();
      const loaded = await loadCheckpointStage(config, positionOf(stage, 2, 1), () => undefined);
      const read = rchar() - before;
      // The graph and small tensors, the slice (with the checkpoint's record headers), and the
      // constant when it is this stage's: never the model's other 256 KiB weights.
      const floor = loaded.sliceBytes + (stage === stageOfConstant ? constant : 0);
      expect(read).toBeGreaterThanOrEqual(floor);
      expect(read).toBeLessThan(floor + (modelBytes - 2 * constant) + 128 * 1024);
      expect(modelBytes).toBeGreaterThan(2 * constant);
    }
  });
});

describe('requested outputs', () => {
  it('returns only the outputs asked for, in the order asked, even one produced in the first stage', async () => {
    const net = transformerNetwork();
    const fixture = writeServeFixture(mkdtempSync(join(tmpdir(), 'serve-ckpt-')), net, 4);
    const group = await startInProcessGroup({} as any, new Array(4).fill(new Uint8Array()), {
      loader: loadCheckpointStage,
      configOf: (ports) => fixtureConfig(fixture, ports),
    });
    try {
      const x = net.sampleInput(1).x;
      const expected = await singleDeviceOutputs(net, { x: new ort.Tensor('float32', x.data, x.dims) });
      const client = oipClient(group.grpcAddress);
      const ask = async (names: string[]) => call(client, 'ModelInfer', {
        model_name: 'net', inputs: [{ name: 'x', datatype: 'FP32', shape: x.dims }], raw_input_contents: [Buffer.from(x.data.buffer)],
        outputs: names.map((name) => ({ name })),
      });
      const one = await ask(['blocks.0.h']);
      expect(one.outputs.map((o: any) => o.name)).toEqual(['blocks.0.h']);
      expect(Buffer.compare(one.raw_output_contents[0], bytesOf(expected['blocks.0.h']))).toBe(0);
      const both = await ask(['blocks.0.h', 'y']);
      expect(both.outputs.map((o: any) => o.name)).toEqual(['blocks.0.h', 'y']);
      expect(Buffer.compare(both.raw_output_contents[1], bytesOf(expected.y))).toBe(0);
      client.close();
    } finally {
      await group.stop();
    }
  });
});
