// Small networks for the serving suites, built with core/onnx's GraphBuilder, and a way to run them
// as a pipeline inside one process (the rank processes' code, loopback ports) or on one onnxruntime
// session (the single-device oracle).
import * as ort from 'onnxruntime-node';
import { GraphBuilder, seededFloats } from '../../core/onnx/graph-builder.js';
import { serializeOnnx, type OnnxModel } from '../../core/onnx/model.js';
import { inferTensorTypes } from '../../core/onnx/shapes.js';
import type { PipelineSpec } from '../../runtime-image/pipeline/spec.js';
import { sessionOptions } from '../../runtime-image/pipeline/stage-session.js';
import { oipOfOnnxElemType, type TensorMeta } from '../../runtime-image/tensor.js';

const f32 = (a: Float32Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** x[batch,16] → 4 × (MatMul, Add, Relu) → y[batch,8]. */
export function mlpModel(): OnnxModel {
  const g = new GraphBuilder('mlp').input('x', 'F32', ['batch', 16]);
  const widths = [16, 32, 32, 24, 8];
  let cur = 'x';
  for (let l = 0; l < 4; l++) {
    const [a, b] = [widths[l], widths[l + 1]];
    g.initializer(`layer${l}.weight`, 'F32', [a, b], f32(seededFloats(a * b, 11 + l, 0.5)));
    g.initializer(`layer${l}.bias`, 'F32', [b], f32(seededFloats(b, 101 + l, 0.1)));
    g.node('MatMul', [cur, `layer${l}.weight`], [`l${l}.mm`]);
    g.node('Add', [`l${l}.mm`, `layer${l}.bias`], [l < 3 ? `l${l}.pre` : 'y']);
    if (l < 3) g.node('Relu', [`l${l}.pre`], [`l${l}.out`]);
    cur = `l${l}.out`;
  }
  return g.output('y', 'F32', ['batch', 8]).model();
}

/**
 * A transformer-style block on x[batch,4,16]: LayerNorm → MLP → + x (residual), then LayerNorm →
 * attention-like mixing (Softmax of a projection) → + h (residual). Cut into 2 or 4 stages, the
 * residual inputs x and h cross stage boundaries (skip connections carried forward).
 */
export function transformerBlockModel(): OnnxModel {
  const D = 16;
  const g = new GraphBuilder('block').input('x', 'F32', ['batch', 4, D]);
  g.initializer('ln1.gamma', 'F32', [D], f32(seededFloats(D, 3, 1)));
  g.initializer('ln1.beta', 'F32', [D], f32(seededFloats(D, 4, 0.1)));
  g.initializer('ffn.w1', 'F32', [D, 32], f32(seededFloats(D * 32, 5, 0.3)));
  g.initializer('ffn.w2', 'F32', [32, D], f32(seededFloats(32 * D, 6, 0.3)));
  g.initializer('ln2.gamma', 'F32', [D], f32(seededFloats(D, 7, 1)));
  g.initializer('ln2.beta', 'F32', [D], f32(seededFloats(D, 8, 0.1)));
  g.initializer('mix.wq', 'F32', [D, D], f32(seededFloats(D * D, 9, 0.3)));
  g.initializer('mix.wv', 'F32', [D, D], f32(seededFloats(D * D, 10, 0.3)));
  g.node('LayerNormalization', ['x', 'ln1.gamma', 'ln1.beta'], ['n1'], { axis: -1 });
  g.node('MatMul', ['n1', 'ffn.w1'], ['f1']);
  g.node('Relu', ['f1'], ['f1r']);
  g.node('MatMul', ['f1r', 'ffn.w2'], ['f2']);
  g.node('Add', ['x', 'f2'], ['h']);
  g.node('LayerNormalization', ['h', 'ln2.gamma', 'ln2.beta'], ['n2'], { axis: -1 });
  g.node('MatMul', ['n2', 'mix.wq'], ['q']);
  g.node('Softmax', ['q'], ['p'], { axis: -1 });
  g.node('MatMul', ['p', 'mix.wv'], ['v']);
  g.node('Add', ['h', 'v'], ['out']);
  return g.output('out', 'F32', ['batch', 4, D]).model();
}

/**
 * Cuts a graph into consecutive node ranges (`cuts` = index of each stage's first node after the
 * first). Each stage takes what it uses from earlier stages or the model inputs and gives what later
 * stages or the model outputs need. The tests' own small cutter, so the runtime is checked apart
 * from the partitioner; the rank processes use core/onnx's planPipeline.
 */
export function cutByNodes(model: OnnxModel, cuts: number[]): { spec: PipelineSpec; stageModels: Uint8Array[] } {
  const graph = model.graph!;
  const nodes = graph.node ?? [];
  const bounds = [0, ...cuts, nodes.length];
  const types = inferTensorTypes(graph);
  const inits = new Map((graph.initializer ?? []).map((t) => [t.name!, t]));
  const modelOutputs = new Set((graph.output ?? []).map((o) => o.name!));
  const metaOf = (name: string): TensorMeta => {
    const t = types.get(name)!;
    return { name, datatype: oipOfOnnxElemType(t.elemType!), shape: (t.shape ?? []).map((d) => (typeof d === 'number' ? d : -1)) };
  };
  const stages: PipelineSpec['stages'] = [];
  const stageModels: Uint8Array[] = [];
  for (let s = 0; s + 1 < bounds.length; s++) {
    const own = nodes.slice(bounds[s], bounds[s + 1]);
    const produced = new Set(own.flatMap((n) => n.output ?? []));
    const used = [...new Set(own.flatMap((n) => n.input ?? []))];
    const inputs = used.filter((n) => n && !produced.has(n) && !inits.has(n));
    const later = new Set(nodes.slice(bounds[s + 1]).flatMap((n) => n.input ?? []));
    const outputs = [...produced].filter((n) => later.has(n) || modelOutputs.has(n));
    stages.push({ inputs, outputs });
    const valueInfo = (name: string) => {
      const m = metaOf(name);
      const t = types.get(name)!;
      return { name, type: { tensorType: { elemType: t.elemType, shape: { dim: m.shape.map((d, i) => (d >= 0 ? { dimValue: d } : { dimParam: `d${i}` })) } } } };
    };
    stageModels.push(serializeOnnx({
      ...model,
      graph: {
        name: `${graph.name}_stage${s}`,
        node: own,
        input: inputs.map(valueInfo),
        output: outputs.map(valueInfo),
        initializer: used.filter((n) => inits.has(n)).map((n) => inits.get(n)!),
      },
    }));
  }
  const spec: PipelineSpec = {
    modelInputs: (graph.input ?? []).map((i) => metaOf(i.name!)),
    modelOutputs: (graph.output ?? []).map((o) => metaOf(o.name!)),
    stages,
  };
  return { spec, stageModels };
}

/** The single-device oracle: one onnxruntime session on the whole model, same session options. */
export async function runSingleDevice(model: OnnxModel, feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.Tensor>> {
  const session = await ort.InferenceSession.create(serializeOnnx(model), sessionOptions());
  try {
    return await session.run(feeds);
  } finally {
    await session.release();
  }
}

export function bytesOf(t: ort.Tensor): Buffer {
  const d = t.data as unknown as ArrayBufferView;
  return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
}

