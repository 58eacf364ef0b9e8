/**
 * Small networks stated as ONNX graphs, for tests and benchmarks of the pipeline tools: an MLP and a
 * two-block transformer-style encoder (layer norm, attention matmuls, residuals that cross stage
 * boundaries, a skip from the input to the output, and an output produced in the first block).
 * Each comes with its parameters (as a checkpoint would hold them) and the pipeline stage of each
 * parameter for 1, 2 or 4 stages. The graph's own initializers are zeros: the real values must be
 * bound from the weights.
 */
import type { StageWeight } from './bind.js';
import { GraphBuilder, floatAttribute, seededFloats } from './graph-builder.js';
import type { OnnxModel } from './model.js';

export interface SampleNetwork {
  model: OnnxModel;
  /** Checkpoint name -> tensor. */
  weights: Map<string, StageWeight>;
  /** Pipeline stage of each parameter (checkpoint/initializer name) for a given stage count. */
  stageOf(stages: number): (name: string) => number | undefined;
  /** A deterministic input feed: name -> { dims, data }. */
  sampleInput(batch: number): Record<string, { dims: number[]; data: Float32Array }>;
}

function f32(data: Float32Array): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}

class ParamSet {
  readonly weights = new Map<string, StageWeight>();
  readonly group = new Map<string, number>();
  private seed = 11;
  add(g: GraphBuilder, name: string, shape: number[], group: number, init: 'random' | 'ones' | 'zeros' = 'random', scale = 0.5): string {
    const count = shape.reduce((a, b) => a * b, 1);
    const data = init === 'random' ? seededFloats(count, this.seed++, scale) : new Float32Array(count).fill(init === 'ones' ? 1 : 0);
    this.weights.set(name, { dtype: 'F32', shape, data: f32(data) });
    this.group.set(name, group);
    g.initializer(name, 'F32', shape, new Float32Array(count)); // placeholder: bound from the checkpoint
    return name;
  }
  stageOf(groups: number) {
    return (stages: number) => (name: string) => {
      const gi = this.group.get(name);
      return gi === undefined ? undefined : Math.floor((gi * stages) / groups);
    };
  }
}

/** x[batch, 16] -> 4 x (MatMul + bias, Relu between) -> y[batch, 4]. Layer i is parameter group i. */
export function mlpNetwork(widths: number[] = [16, 32, 32, 32, 4]): SampleNetwork {
  const g = new GraphBuilder('mlp').input('x', 'F32', ['batch', widths[0]]);
  const params = new ParamSet();
  let h = 'x';
  const layers = widths.length - 1;
  for (let i = 0; i < layers; i++) {
    const w = params.add(g, `layers.${i}.weight`, [widths[i], widths[i + 1]], i);
    const b = params.add(g, `layers.${i}.bias`, [widths[i + 1]], i, 'random', 0.1);
    g.node('MatMul', [h, w], [`mm${i}`]).node('Add', [`mm${i}`, b], [`lin${i}`]);
    h = `lin${i}`;
    if (i < layers - 1) {
      g.node('Relu', [h], [`act${i}`]);
      h = `act${i}`;
    }
  }
  g.node('Identity', [h], ['y']).output('y', 'F32', ['batch', widths[layers]]);
  return {
    model: g.model(),
    weights: params.weights,
    stageOf: params.stageOf(layers),
    sampleInput: (batch) => ({ x: { dims: [batch, widths[0]], data: seededFloats(batch * widths[0], 7) } }),
  };
}

/**
 * Two pre-norm encoder blocks on x[batch, seq, d]. Parameter groups: block0 attention, block0 MLP,
 * block1 attention, block1 MLP (so 4 stages cut inside blocks and residuals cross every boundary).
 * Outputs: y = blocks(x) + x (a skip over every stage) and h0 (block 0's attention residual, produced early).
 */
export function transformerNetwork(d = 16, seq = 8, hidden = 32): SampleNetwork {
  const g = new GraphBuilder('encoder').input('x', 'F32', ['batch', seq, d]);
  const params = new ParamSet();
  let x = 'x';
  for (let b = 0; b < 2; b++) {
    const p = (n: string) => `blocks.${b}.${n}`;
    const ga = 2 * b, gm = 2 * b + 1;
    // Attention: LN -> Q, K, V -> softmax(Q K^T * scale) V -> out projection -> residual.
    params.add(g, p('ln1.gamma'), [d], ga, 'random', 1);
    params.add(g, p('ln1.beta'), [d], ga, 'random', 0.1);
    g.node('LayerNormalization', [x, p('ln1.gamma'), p('ln1.beta')], [p('ln1')], { axis: -1 }, [floatAttribute('epsilon', 1e-5)]);
    for (const m of ['q', 'k', 'v', 'o']) params.add(g, p(`attn.${m}.weight`), [d, d], ga, 'random', 0.4);
    g.node('MatMul', [p('ln1'), p('attn.q.weight')], [p('q')])
      .node('MatMul', [p('ln1'), p('attn.k.weight')], [p('k')])
      .node('MatMul', [p('ln1'), p('attn.v.weight')], [p('v')])
      .node('Transpose', [p('k')], [p('kT')], { perm: [0, 2, 1] })
      .node('MatMul', [p('q'), p('kT')], [p('scores')])
      .node('Constant', [], [p('scale')], {}, [{ name: 'value', type: 4, t: { dims: [], dataType: 1, rawData: f32(new Float32Array([1 / Math.sqrt(d)])) } }])
      .node('Mul', [p('scores'), p('scale')], [p('scaled')])
      .node('Softmax', [p('scaled')], [p('probs')], { axis: -1 })
      .node('MatMul', [p('probs'), p('v')], [p('ctx')])
      .node('MatMul', [p('ctx'), p('attn.o.weight')], [p('attn_out')])
      .node('Add', [x, p('attn_out')], [p('h')]);
    const h = p('h');
    // MLP: LN -> W1 + b1 -> Gelu-ish (Erf form) -> W2 + b2 -> residual.
    params.add(g, p('ln2.gamma'), [d], gm, 'random', 1);
    params.add(g, p('ln2.beta'), [d], gm, 'random', 0.1);
    params.add(g, p('mlp.fc1.weight'), [d, hidden], gm, 'random', 0.3);
    params.add(g, p('mlp.fc1.bias'), [hidden], gm, 'random', 0.1);
    params.add(g, p('mlp.fc2.weight'), [hidden, d], gm, 'random', 0.3);
    params.add(g, p('mlp.fc2.bias'), [d], gm, 'random', 0.1);
    g.node('LayerNormalization', [h, p('ln2.gamma'), p('ln2.beta')], [p('ln2')], { axis: -1 }, [floatAttribute('epsilon', 1e-5)])
      .node('MatMul', [p('ln2'), p('mlp.fc1.weight')], [p('fc1')])
      .node('Add', [p('fc1'), p('mlp.fc1.bias')], [p('fc1b')])
      .node('Tanh', [p('fc1b')], [p('act')])
      .node('MatMul', [p('act'), p('mlp.fc2.weight')], [p('fc2')])
      .node('Add', [p('fc2'), p('mlp.fc2.bias')], [p('fc2b')])
      .node('Add', [h, p('fc2b')], [p('out')]);
    x = p('out');
  }
  g.node('Add', [x, 'x'], ['y'])
    .output('y', 'F32', ['batch', seq, d])
    .output('blocks.0.h', 'F32', ['batch', seq, d]);
  return {
    model: g.model(),
    weights: params.weights,
    stageOf: params.stageOf(4),
    sampleInput: (batch) => ({ x: { dims: [batch, seq, d], data: seededFloats(batch * seq * d, 5) } }),
  };
}
