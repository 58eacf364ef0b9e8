import { describe, expect, it } from 'vitest';
import { ShardserveError } from '../errors.js';
import { GraphBuilder } from './graph-builder.js';
import { type PipelinePlan, extractStageModel, planPipeline } from './partition.js';
import { mlpNetwork, transformerNetwork } from './sample-networks.js';

const names = (list: { name: string }[]) => list.map((t) => t.name);
const io = (plan: PipelinePlan) => plan.stages.map((s) => `${names(s.inputs).join(',')} -> ${names(s.outputs).join(',')}`);

function expectCutError(run: () => unknown, message: string | RegExp): void {
  let caught: unknown;
  try {
    run();
  } catch (e) {
    caught = e;
  }
  expect(caught).toBeInstanceOf(ShardserveError);
  expect((caught as ShardserveError).code).toBe('PipelineCut');
  expect((caught as Error).message).toMatch(message);
}

/** x -> MatMul(a) -> MatMul(b) -> y, with the stage of a and b given. */
function twoLayer(stageA: number, stageB: number) {
  const g = new GraphBuilder('two').input('x', 'F32', ['n', 2])
    .initializer('a', 'F32', [2, 2], new Float32Array(4)).initializer('b', 'F32', [2, 2], new Float32Array(4))
    .node('MatMul', ['x', 'a'], ['h']).node('MatMul', ['h', 'b'], ['y']).output('y', 'F32', ['n', 2]);
  const stages: Record<string, number> = { a: stageA, b: stageB };
  return { model: g.model(), stageOf: (n: string) => stages[n] };
}

describe('planPipeline by parameter stages', () => {
  it('keeps a 1-stage plan whole: all nodes, graph inputs in, graph outputs out', () => {
    const net = mlpNetwork();
    const plan = planPipeline(net.model, { stages: 1, stageOfInitializer: net.stageOf(1) });
    expect(plan.by).toBe('single');
    expect(plan.stages[0].nodes).toEqual(net.model.graph!.node!.map((_, i) => i));
    expect(io(plan)).toEqual(['x -> y']);
    expect(plan.stages[0].parameters).toHaveLength(8);
  });

  it('cuts an MLP after the activation that follows the last layer of each stage', () => {
    const net = mlpNetwork();
    const plan = planPipeline(net.model, { stages: 2, stageOfInitializer: net.stageOf(2) });
    expect(plan.by).toBe('parameters');
    expect(io(plan)).toEqual(['x -> act1', 'act1 -> y']);
    expect(plan.stages[0].parameters).toEqual(['layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias']);
    expect(plan.stages[1].outputs).toEqual([{ name: 'y', dtype: 'F32', elemType: 1, shape: ['batch', 4] }]);
    expect(plan.stages[1].inputs).toEqual([{ name: 'act1', dtype: 'F32', elemType: 1, shape: ['batch', 32] }]);
  });

  it('carries the skip connection and the early output of a transformer through every later stage', () => {
    const net = transformerNetwork();
    const plan = planPipeline(net.model, { stages: 4, stageOfInitializer: net.stageOf(4) });
    expect(io(plan)).toEqual([
      'x -> x,blocks.0.h',
      'x,blocks.0.h -> x,blocks.0.h,blocks.0.out',
      'x,blocks.0.h,blocks.0.out -> x,blocks.0.h,blocks.1.h',
      'x,blocks.0.h,blocks.1.h -> y,blocks.0.h',
    ]);
    for (let s = 1; s < 4; s++) expect(plan.stages[s].inputs).toEqual(plan.stages[s - 1].outputs);
    expect(plan.stages[1].inputs[2] ?? plan.stages[2].inputs[2]).toEqual({ name: 'blocks.0.out', dtype: 'F32', elemType: 1, shape: ['batch', 8, 16] });
  });

  it('puts a parameter-free Constant node in the stage of its consumer, not the first stage', () => {
    const net = transformerNetwork();
    const plan = planPipeline(net.model, { stages: 4, stageOfInitializer: net.stageOf(4) });
    const nodes = net.model.graph!.node!;
    const stageOfOutput = (t: string) => plan.stages.find((s) => s.nodes.some((i) => nodes[i].output!.includes(t)))!.stage;
    expect(stageOfOutput('blocks.1.scale')).toBe(2);
    expect(stageOfOutput('blocks.1.scaled')).toBe(2);
  });

  it('orders nodes topologically when the file lists them out of order', () => {
    const net = mlpNetwork();
    const model = structuredClone(net.model);
    model.graph!.node!.reverse();
    const plan = planPipeline(model, { stages: 2, stageOfInitializer: net.stageOf(2) });
    expect(io(plan)).toEqual(['x -> act1', 'act1 -> y']);
    const nodes = model.graph!.node!;
    for (const s of plan.stages) {
      const seen = new Set(s.inputs.map((t) => t.name).concat(s.initializers));
      for (const i of s.nodes) {
        for (const input of nodes[i].input!) expect(seen.has(input), `${input} before ${nodes[i].name}`).toBe(true);
        for (const o of nodes[i].output!) seen.add(o);
      }
    }
  });

  it('gives every stage a topological, contiguous block of nodes covering the graph once', () => {
    const net = transformerNetwork();
    const plan = planPipeline(net.model, { stages: 2, stageOfInitializer: net.stageOf(2) });
    const all = plan.stages.flatMap((s) => s.nodes).sort((a, b) => a - b);
    expect(all).toEqual(net.model.graph!.node!.map((_, i) => i));
    expect(plan.stages[0].nodes.every((n) => n < Math.min(...plan.stages[1].nodes))).toBe(true);
  });

  it('runs a parameter-free normalization with the weights after it when that carries fewer bytes', () => {
    // h = x·a; y = (h - mean(h)) * b + h (pre-norm residual). With the producer, both the centered h and
    // h itself would cross; with the consumer only h.
    const g = new GraphBuilder('norm').input('x', 'F32', [4, 8])
      .initializer('a', 'F32', [8, 8], new Float32Array(64)).initializer('b', 'F32', [8], new Float32Array(8))
      .node('MatMul', ['x', 'a'], ['h']).node('ReduceMean', ['h'], ['mean'], { axes: [-1] })
      .node('Sub', ['h', 'mean'], ['centered']).node('Mul', ['centered', 'b'], ['scaled']).node('Add', ['scaled', 'h'], ['y']).output('y', 'F32', [4, 8]);
    const plan = planPipeline(g.model(), { stages: 2, stageOfInitializer: (n) => ({ a: 0, b: 1 })[n] });
    expect(io(plan)).toEqual(['x -> h', 'h -> y']);
    expect(plan.stages[1].nodes).toEqual([1, 2, 3, 4]);
  });

  it.each([
    ['parameters of a later stage come first', () => planPipeline(twoLayer(1, 0).model, { stages: 2, stageOfInitializer: twoLayer(1, 0).stageOf }),
      /parameter stages are not monotone in topological order: node 'MatMul_1' \(MatMul\) reads 'b' \(stage 0\) but depends on node 'MatMul_0' \(MatMul\) which reads 'a' \(stage 1\)/],
    ['a stage outside the pipeline', () => planPipeline(twoLayer(0, 2).model, { stages: 2, stageOfInitializer: twoLayer(0, 2).stageOf }),
      "model.onnx: parameter 'b' belongs to stage 2, but the pipeline has 2 stage(s) (0..1)"],
    ['a stage that gets no nodes', () => planPipeline(twoLayer(0, 0).model, { stages: 2, stageOfInitializer: twoLayer(0, 0).stageOf }),
      'pipeline stage 1 of 2 gets no nodes (no parameter of the graph belongs to stage 1)'],
    ['several stages without a strategy or cuts', () => planPipeline(twoLayer(0, 1).model, { stages: 2, uri: 'net.onnx' }),
      'net.onnx: cutting into 2 stages needs parameter stages (a strategy) or cutTensors'],
  ])('rejects %s', (_name, run, message) => {
    expectCutError(run, message);
  });

  it('rejects a node that reads parameters of two stages, naming both', () => {
    const g = new GraphBuilder('tied').input('x', 'F32', [2])
      .initializer('a', 'F32', [2], new Float32Array(2)).initializer('b', 'F32', [2], new Float32Array(2))
      .node('Sum', ['x', 'a', 'b'], ['y']).output('y', 'F32', [2]);
    const stageOf = (n: string) => ({ a: 0, b: 1 })[n];
    expectCutError(() => planPipeline(g.model(), { stages: 2, stageOfInitializer: stageOf }),
      "node 'Sum_0' (Sum) reads parameters of two stages: 'a' (stage 0) and 'b' (stage 1); a node must run in one stage");
  });

  it('lets a tied parameter pin nothing but be required by every stage that reads it', () => {
    // A shared embedding E: looked up in stage 0, reused (transposed) as the output projection in stage 1.
    const g = new GraphBuilder('tied').input('ids', 'I64', [4])
      .initializer('E', 'F32', [10, 8], new Float32Array(80))
      .initializer('w0', 'F32', [8, 8], new Float32Array(64)).initializer('w1', 'F32', [8, 8], new Float32Array(64))
      .node('Gather', ['E', 'ids'], ['emb']).node('MatMul', ['emb', 'w0'], ['h0']).node('MatMul', ['h0', 'w1'], ['h1'])
      .node('Transpose', ['E'], ['Et']).node('MatMul', ['h1', 'Et'], ['logits']).output('logits', 'F32', [4, 10]);
    const plan = planPipeline(g.model(), { stages: 2, stageOfInitializer: (n) => ({ w0: 0, w1: 1 })[n], sharedParameters: ['E'] });
    expect(io(plan)).toEqual(['ids -> h0', 'h0 -> logits']);
    expect(plan.stages.map((s) => s.parameters)).toEqual([['E', 'w0'], ['E', 'w1']]);
  });

  it('carries a graph input that is also a graph output through to the last stage', () => {
    const model = twoLayer(0, 1).model;
    model.graph!.output!.push({ name: 'x', type: { tensorType: { elemType: 1, shape: { dim: [{ dimParam: 'n' }, { dimValue: 2 }] } } } });
    expect(io(planPipeline(model, { stages: 2, stageOfInitializer: twoLayer(0, 1).stageOf }))).toEqual(['x -> x,h', 'x,h -> y,x']);
  });

  it('carries what a subgraph (If branch) reads from the outer graph to the stage of its node', () => {
    const branch = (name: string, op: string) => ({
      name, node: [{ input: ['h', 'b'], output: [`${name}_out`], opType: op }],
      output: [{ name: `${name}_out`, type: { tensorType: { elemType: 1, shape: { dim: [{ dimParam: 'n' }, { dimValue: 2 }] } } } }],
    });
    const g = new GraphBuilder('if').input('x', 'F32', ['n', 2]).input('flag', 'BOOL', [])
      .initializer('a', 'F32', [2, 2], new Float32Array(4)).initializer('b', 'F32', [2], new Float32Array(2))
      .node('MatMul', ['x', 'a'], ['h'])
      .node('If', ['flag'], ['y'], {}, [{ name: 'then_branch', type: 5, g: branch('then', 'Add') }, { name: 'else_branch', type: 5, g: branch('else', 'Sub') }])
      .output('y', 'F32', ['n', 2]);
    const plan = planPipeline(g.model(), { stages: 2, stageOfInitializer: (n) => ({ a: 0, b: 1 })[n] });
    expect(io(plan)).toEqual(['x,flag -> flag,h', 'flag,h -> y']);
    expect(plan.stages[1].parameters).toEqual(['b']);
  });

  it('asks for value_info when a crossing tensor has no inferable type', () => {
    const g = new GraphBuilder('custom').input('x', 'F32', [2])
      .initializer('a', 'F32', [2], new Float32Array(2)).initializer('b', 'F32', [2], new Float32Array(2))
      .node('Mul', ['x', 'a'], ['h']).node('MyOp', ['h'], ['m']).node('Mul', ['m', 'b'], ['y']).output('y', 'F32', [2]);
    const model = g.model();
    model.graph!.node![1].domain = 'my.domain';
    const stageOf = (n: string) => ({ a: 0, b: 1 })[n];
    expectCutError(() => planPipeline(model, { stages: 2, stageOfInitializer: stageOf }),
      "cannot tell the element type of tensor 'm' that crosses from stage 0 to stage 1; declare it in graph.value_info");
    model.graph!.valueInfo = [{ name: 'm', type: { tensorType: { elemType: 1, shape: { dim: [{ dimValue: 2 }] } } } }];
    expect(io(planPipeline(model, { stages: 2, stageOfInitializer: stageOf }))).toEqual(['x -> m', 'm -> y']);
  });
});

describe('planPipeline by cut tensors', () => {
  it('cuts where the user says, equal to the parameter cut at the same place', () => {
    const net = mlpNetwork();
    const byCut = planPipeline(net.model, { stages: 2, cutTensors: ['act1'], stageOfInitializer: net.stageOf(2) });
    const byParams = planPipeline(net.model, { stages: 2, stageOfInitializer: net.stageOf(2) });
    expect(byCut.by).toBe('cut-tensors');
    expect(byCut.stages).toEqual(byParams.stages);
  });

  it('may cut inside a layer, and carries the residual across the cut', () => {
    const net = transformerNetwork();
    const plan = planPipeline(net.model, { stages: 3, cutTensors: ['blocks.0.probs', 'blocks.1.fc1b'] });
    expect(io(plan)).toEqual([
      'x -> x,blocks.0.ln1,blocks.0.probs',
      'x,blocks.0.ln1,blocks.0.probs -> x,blocks.0.h,blocks.1.h,blocks.1.fc1b',
      'x,blocks.0.h,blocks.1.h,blocks.1.fc1b -> y,blocks.0.h',
    ]);
  });

  it.each([
    ['the wrong number of cut tensors', { stages: 3, cutTensors: ['act0'] }, 'cutTensors lists 1 tensor(s) but 3 stages need 2 (one per boundary)'],
    ['an initializer as cut tensor', { stages: 2, cutTensors: ['layers.0.weight'] }, "cut tensor 'layers.0.weight' (boundary 0) is an initializer; expected the output of a node"],
    ['a graph input as cut tensor', { stages: 2, cutTensors: ['x'] }, "cut tensor 'x' (boundary 0) is a graph input"],
    ['an unknown tensor', { stages: 2, cutTensors: ['nope'] }, "cut tensor 'nope' (boundary 0) is not a tensor of the graph"],
    ['cut tensors out of order', { stages: 3, cutTensors: ['act1', 'act0'] }, "cut tensor 'act0' (boundary 1) does not depend on cut tensor 'act1' (boundary 0)"],
  ])('rejects %s', (_name, opts, message) => {
    expectCutError(() => planPipeline(mlpNetwork().model, opts), message);
  });

  it('rejects cut tensors that do not follow one another', () => {
    const g = new GraphBuilder('fork').input('x', 'F32', [2])
      .node('Relu', ['x'], ['a']).node('Neg', ['x'], ['b']).node('Add', ['a', 'b'], ['y']).output('y', 'F32', [2]);
    expectCutError(() => planPipeline(g.model(), { stages: 3, cutTensors: ['a', 'b'] }),
      "cut tensor 'b' (boundary 1) does not depend on cut tensor 'a' (boundary 0); each cut tensor must come after the previous one");
  });
});

describe('extractStageModel', () => {
  it('declares the plan inputs and outputs and keeps only the stage initializers', () => {
    const net = mlpNetwork();
    const plan = planPipeline(net.model, { stages: 4, stageOfInitializer: net.stageOf(4) });
    const stage = extractStageModel(net.model, plan, 2).graph!;
    expect(stage.name).toBe('mlp_stage2');
    expect(stage.input!.map((i) => i.name)).toEqual(['act1']);
    expect(stage.output!.map((i) => i.name)).toEqual(['act2']);
    expect(stage.initializer!.map((t) => t.name)).toEqual(['layers.2.weight', 'layers.2.bias']);
    expect(stage.input![0].type).toEqual({ tensorType: { elemType: 1, shape: { dim: [{ dimParam: 'batch' }, { dimValue: 32 }] } } });
  });
});
