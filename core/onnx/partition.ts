/**
 * Cut a single-device ONNX graph into pipeline stages.
 *
 * Two ways to say where the cuts go:
 *  - by parameters: `stageOfInitializer(name)` gives the training stage of each parameter; a node
 *    belongs to the stage of the parameters it reads, and parameter-free nodes go with their producer
 *    (or, when nothing before them is pinned, with their consumers), so each stage is a contiguous
 *    block of a topological order;
 *  - by cut tensors: `cutTensors[k]` is the tensor at the end of stage k (one per boundary); a node
 *    belongs to the first stage after every cut tensor it depends on.
 *
 * Every tensor that is produced in one stage and consumed in a later one (skip/residual connections,
 * graph inputs used late, graph outputs produced early) is carried forward through the stages in
 * between, so stage k+1's inputs are exactly stage k's outputs, and the last stage's outputs are
 * the graph's outputs.
 */
import { type DType, DTYPE_BYTES } from '../dtype.js';
import { ShardserveError } from '../errors.js';
import type { GraphProto, NodeProto, OnnxModel, ValueInfoProto } from './model.js';
import { dtypeOfOnnx, onnxDataTypeName, tensorValueInfo } from './model.js';
import { type Shape, inferTensorTypes } from './shapes.js';

/** A tensor entering or leaving a stage. */
export interface StageTensor {
  name: string;
  dtype: DType;
  /** ONNX element type number (TensorProto.DataType). */
  elemType: number;
  /** Numbers for static dims, strings for symbolic ones (e.g. 'batch'), null when unknown; null = unknown rank. */
  shape: Shape;
}

export interface PipelineStage {
  stage: number;
  /** Indices into model.graph.node, in an order that runs (topological). */
  nodes: number[];
  /** For stage 0 the graph's inputs; else exactly the previous stage's outputs. */
  inputs: StageTensor[];
  /** For the last stage the graph's outputs; else everything later stages still need. */
  outputs: StageTensor[];
  /** Initializers the stage's nodes read (parameters and constants), in graph order. */
  initializers: string[];
  /** Those initializers that are parameters (stageOfInitializer knows them): buildStageModel needs a weight for each. */
  parameters: string[];
}

export interface PipelinePlan {
  stageCount: number;
  by: 'single' | 'parameters' | 'cut-tensors';
  /** The whole model's inputs and outputs (what a client sends and gets back). */
  inputs: StageTensor[];
  outputs: StageTensor[];
  stages: PipelineStage[];
}

export interface PlanPipelineOptions {
  stages: number;
  /** The pipeline stage of a parameter, or undefined for initializers that are not parameters. */
  stageOfInitializer?: (name: string) => number | undefined;
  /** One tensor per boundary: cutTensors[k] is the last tensor of stage k. Takes precedence over parameter stages. */
  cutTensors?: string[];
  /**
   * Parameters used in several stages (tied weights such as a shared embedding): they pin no node to a
   * stage, but every stage that reads one lists it in `parameters`, so its weight is required there.
   */
  sharedParameters?: string[];
  /** Names the model in error messages. */
  uri?: string;
}

function cutError(uri: string, message: string, param?: string): ShardserveError {
  return new ShardserveError('PipelineCut', `${uri}: ${message}`, { file: uri, param });
}

/** Names a subgraph (If/Loop/Scan body) reads from the enclosing scope. */
function outerScopeNames(graph: GraphProto, into: Set<string>): void {
  const defined = new Set<string>();
  for (const i of graph.input ?? []) if (i.name) defined.add(i.name);
  for (const t of graph.initializer ?? []) if (t.name) defined.add(t.name);
  for (const node of graph.node ?? []) {
    for (const name of nodeReads(node)) if (!defined.has(name)) into.add(name);
    for (const o of node.output ?? []) if (o) defined.add(o);
  }
}

/** Every tensor name a node reads: its inputs plus what its subgraphs read from outside. */
export function nodeReads(node: NodeProto): string[] {
  const names = (node.input ?? []).filter((n) => n !== '');
  const subgraphs = (node.attribute ?? []).flatMap((a) => [...(a.g ? [a.g] : []), ...(a.graphs ?? [])]);
  if (subgraphs.length === 0) return names;
  const outer = new Set<string>();
  for (const g of subgraphs) outerScopeNames(g, outer);
  return [...new Set([...names, ...outer])];
}

function nodeLabel(node: NodeProto, index: number): string {
  return node.name ? `'${node.name}' (${node.opType})` : `#${index} (${node.opType})`;
}

/** A topological order of the graph's nodes (the stored order when it already is one). */
function topologicalOrder(graph: GraphProto, uri: string): number[] {
  const nodes = graph.node ?? [];
  const producer = new Map<string, number>();
  nodes.forEach((n, i) => (n.output ?? []).forEach((o) => o && producer.set(o, i)));
  const deps = nodes.map((n) => [...new Set(nodeReads(n).map((r) => producer.get(r)).filter((p): p is number => p !== undefined))]);
  const inOrder = deps.every((d, i) => d.every((p) => p < i));
  if (inOrder) return nodes.map((_, i) => i);
  const remaining = deps.map((d) => d.length);
  const users: number[][] = nodes.map(() => []);
  deps.forEach((d, i) => d.forEach((p) => users[p].push(i)));
  const ready = remaining.flatMap((r, i) => (r === 0 ? [i] : []));
  const order: number[] = [];
  while (ready.length) {
    ready.sort((a, b) => a - b);
    const i = ready.shift()!;
    order.push(i);
    for (const u of users[i]) if (--remaining[u] === 0) ready.push(u);
  }
  if (order.length !== nodes.length) {
    const stuck = remaining.findIndex((r) => r > 0);
    throw cutError(uri, `graph has a cycle through node ${nodeLabel(nodes[stuck], stuck)}; expected a DAG`);
  }
  return order;
}

export function planPipeline(model: OnnxModel, opts: PlanPipelineOptions): PipelinePlan {
  const uri = opts.uri ?? 'model.onnx';
  const graph = model.graph;
  if (!graph) throw cutError(uri, 'model has no graph');
  const P = opts.stages;
  if (!Number.isInteger(P) || P < 1) throw new ShardserveError('Usage', `stages must be a positive integer, got ${P}`);
  const nodes = graph.node ?? [];
  const initializerOrder = [...(graph.initializer ?? []).map((t) => t.name ?? ''), ...(graph.sparseInitializer ?? []).map((t) => t.values?.name ?? '')];
  const initializerNames = new Set(initializerOrder);
  const graphInputs = (graph.input ?? []).filter((i) => i.name && !initializerNames.has(i.name));
  const graphOutputs = graph.output ?? [];
  const order = topologicalOrder(graph, uri);
  const position = new Map<number, number>(order.map((n, k) => [n, k]));

  const producer = new Map<string, number>();
  nodes.forEach((n, i) => (n.output ?? []).forEach((o) => o && producer.set(o, i)));
  const reads = nodes.map((n) => nodeReads(n));
  const preds = reads.map((r) => [...new Set(r.map((t) => producer.get(t)).filter((p): p is number => p !== undefined))]);
  const succs: number[][] = nodes.map(() => []);
  preds.forEach((ps, i) => ps.forEach((p) => succs[p].push(i)));

  // pin: the exact stage a node must run in; floor: the earliest stage it may run in.
  const pin = new Array<number | undefined>(nodes.length).fill(undefined);
  const pinReason = new Array<string>(nodes.length).fill('');
  const floor = new Array<number>(nodes.length).fill(0);
  let by: PipelinePlan['by'] = 'single';
  const parameterStage = new Map<string, number>();
  if (opts.stageOfInitializer) {
    for (const name of initializerNames) {
      const trained = opts.stageOfInitializer(name);
      if (trained === undefined) continue;
      // One stage (a single device) runs every parameter, whatever stage it trained in.
      const s = P === 1 && Number.isInteger(trained) && trained >= 0 ? 0 : trained;
      if (!Number.isInteger(s) || s < 0 || s >= P) {
        throw cutError(uri, `parameter '${name}' belongs to stage ${s}, but the pipeline has ${P} stage(s) (0..${P - 1})`, name);
      }
      parameterStage.set(name, s);
    }
  }

  if (opts.cutTensors && opts.cutTensors.length > 0) {
    by = 'cut-tensors';
    const cuts = opts.cutTensors;
    if (cuts.length !== P - 1) {
      throw cutError(uri, `cutTensors lists ${cuts.length} tensor(s) but ${P} stages need ${P - 1} (one per boundary)`);
    }
    cuts.forEach((t, k) => {
      const p = producer.get(t);
      if (p === undefined) {
        const what = initializerNames.has(t) ? 'an initializer' : graphInputs.some((i) => i.name === t) ? 'a graph input' : 'not a tensor of the graph';
        throw cutError(uri, `cut tensor '${t}' (boundary ${k}) is ${what}; expected the output of a node`, t);
      }
      if (pin[p] !== undefined) throw cutError(uri, `cut tensors '${pinReason[p]}' and '${t}' come from the same node ${nodeLabel(nodes[p], p)}`, t);
      pin[p] = k;
      pinReason[p] = t;
    });
    const cutAt = new Map(cuts.map((t, k) => [t, k]));
    reads.forEach((r, i) => {
      for (const t of r) {
        const k = cutAt.get(t);
        if (k !== undefined) floor[i] = Math.max(floor[i], k + 1);
      }
    });
  } else if (P > 1) {
    if (!opts.stageOfInitializer) throw cutError(uri, `cutting into ${P} stages needs parameter stages (a strategy) or cutTensors`);
    by = 'parameters';
    reads.forEach((r, i) => {
      for (const t of r) {
        const s = parameterStage.get(t);
        if (s === undefined) continue;
        if (pin[i] !== undefined && pin[i] !== s) {
          throw cutError(uri, `node ${nodeLabel(nodes[i], i)} reads parameters of two stages: '${pinReason[i]}' (stage ${pin[i]}) and '${t}' (stage ${s}); a node must run in one stage`, t);
        }
        pin[i] = s;
        pinReason[i] = t;
      }
    });
  }

  // Forward: the earliest stage each node can run in, and whether anything pinned precedes it.
  // `why` says what forces a node's earliest stage, for error messages.
  const stageOf = new Array<number>(nodes.length).fill(0);
  const anchored = new Array<boolean>(nodes.length).fill(false);
  const why = new Array<string>(nodes.length).fill('');
  const cutIndex = new Map((opts.cutTensors ?? []).map((t, k) => [t, k]));
  const floorWhy = (i: number) => {
    const t = reads[i].filter((r) => cutIndex.has(r)).sort((a, b) => cutIndex.get(b)! - cutIndex.get(a)!)[0];
    return `cut tensor '${t}' (boundary ${cutIndex.get(t)})`;
  };
  for (const i of order) {
    let lo = floor[i];
    let reason = floor[i] > 0 ? floorWhy(i) : '';
    let hasAnchor = pin[i] !== undefined || floor[i] > 0;
    for (const p of preds[i]) {
      if (anchored[p]) hasAnchor = true;
      if (stageOf[p] > lo) {
        lo = stageOf[p];
        reason = why[p];
      }
    }
    if (pin[i] !== undefined) {
      const k = pin[i]!;
      if (lo > k) {
        if (by === 'cut-tensors') {
          throw cutError(uri, `cut tensor '${pinReason[i]}' (boundary ${k}) depends on ${reason}; list cut tensors in topological order, one per boundary`, pinReason[i]);
        }
        throw cutError(uri, `parameter stages are not monotone in topological order: node ${nodeLabel(nodes[i], i)} reads '${pinReason[i]}' (stage ${k}) but depends on ${reason}; a stage may only depend on earlier stages`, pinReason[i]);
      }
      if (by === 'cut-tensors' && k > 0 && lo < k) {
        throw cutError(uri, `cut tensor '${pinReason[i]}' (boundary ${k}) does not depend on cut tensor '${opts.cutTensors![k - 1]}' (boundary ${k - 1}); each cut tensor must come after the previous one`, pinReason[i]);
      }
      lo = k;
      reason = by === 'cut-tensors' ? `cut tensor '${pinReason[i]}' (boundary ${k})` : `node ${nodeLabel(nodes[i], i)} which reads '${pinReason[i]}' (stage ${k})`;
    }
    stageOf[i] = lo;
    why[i] = reason;
    anchored[i] = hasAnchor;
  }
  // Parameter-free nodes between two pinned ones may run with their producer or their consumer.
  // Both are valid cuts; take the one that carries fewer bytes across the boundaries (ties: producer).
  // E.g. a decomposed pre-norm LayerNorm goes with the weights that follow it, so only its input crosses.
  const graphOutputNames = new Set(graphOutputs.map((o) => o.name ?? ''));
  const withConsumers = (lo: number[], keep: (i: number) => boolean): number[] => {
    const out = [...lo];
    for (let k = order.length - 1; k >= 0; k--) {
      const i = order[k];
      if (keep(i)) continue;
      let s = succs[i].length ? Math.min(...succs[i].map((u) => out[u])) : P - 1;
      if ((nodes[i].output ?? []).some((o) => graphOutputNames.has(o))) s = Math.min(s, P - 1);
      out[i] = Math.max(s, lo[i]);
    }
    return out;
  };
  const producerFirst = withConsumers(stageOf, (i) => anchored[i]);
  const consumerFirst = withConsumers(stageOf, (i) => pin[i] !== undefined);

  const types = inferTensorTypes(graph, order);
  const graphOutputList = graphOutputs.map((o) => o.name ?? '').filter((n) => n);
  const flow = (assignment: number[]) => {
    const producedIn = new Map<string, number>();
    const neededUntil = new Map<string, number>();
    for (const i of graphInputs) producedIn.set(i.name!, -1);
    nodes.forEach((n, i) => (n.output ?? []).forEach((o) => o && producedIn.set(o, assignment[i])));
    reads.forEach((r, i) => {
      for (const t of r) neededUntil.set(t, Math.max(neededUntil.get(t) ?? -1, assignment[i]));
    });
    for (const o of graphOutputList) neededUntil.set(o, P);
    return { producedIn, neededUntil };
  };
  const carriedBytes = (assignment: number[]): number => {
    const { producedIn, neededUntil } = flow(assignment);
    let total = 0;
    for (const [t, from] of producedIn) {
      const crossings = Math.min(neededUntil.get(t) ?? -1, P - 1) - Math.max(from, 0);
      if (crossings <= 0) continue;
      const shape = types.get(t)?.shape ?? [];
      const elems = shape.reduce<number>((a, d) => a * (typeof d === 'number' ? d : 1), 1);
      const dtype = dtypeOfOnnx(types.get(t)?.elemType);
      total += crossings * elems * (dtype ? DTYPE_BYTES[dtype] : 4);
    }
    return total;
  };
  const hasEmptyStage = (assignment: number[]) => {
    const used = new Set(assignment);
    return Array.from({ length: P }, (_, s) => s).some((s) => !used.has(s));
  };
  let chosen = producerFirst;
  if (P > 1 && !hasEmptyStage(consumerFirst) && (hasEmptyStage(producerFirst) || carriedBytes(consumerFirst) < carriedBytes(producerFirst))) {
    chosen = consumerFirst;
  }
  for (let i = 0; i < nodes.length; i++) stageOf[i] = chosen[i];

  const stageNodes: number[][] = Array.from({ length: P }, () => []);
  for (const i of order) stageNodes[stageOf[i]].push(i);
  stageNodes.forEach((list, s) => {
    if (list.length === 0) {
      const why = by === 'parameters' ? `no parameter of the graph belongs to stage ${s}` : 'the cuts leave it empty';
      throw cutError(uri, `pipeline stage ${s} of ${P} gets no nodes (${why}); expected every stage to run part of the network`);
    }
  });

  // Where each tensor is produced and last needed. Graph inputs enter before stage 0; outputs leave after the last.
  for (const o of graphOutputs) {
    if (o.name && !producer.has(o.name) && !initializerNames.has(o.name) && !graphInputs.some((i) => i.name === o.name)) {
      throw cutError(uri, `graph output '${o.name}' is produced by no node`, o.name);
    }
  }
  const { producedIn, neededUntil } = flow(stageOf);

  const stageTensor = (name: string, from: number, to: number): StageTensor => {
    const t = types.get(name);
    const dtype = dtypeOfOnnx(t?.elemType);
    if (!t?.elemType) {
      throw cutError(uri, `cannot tell the element type of tensor '${name}' that crosses from stage ${from} to stage ${to}; declare it in graph.value_info`, name);
    }
    if (!dtype) throw cutError(uri, `tensor '${name}' crossing from stage ${from} to stage ${to} has element type ${onnxDataTypeName(t.elemType)}, which cannot be carried between stages`, name);
    return { name, dtype, elemType: t.elemType, shape: t.shape };
  };

  // Carried tensors in a stable order: graph inputs, then by producing node position.
  const carriedOrder: string[] = [...graphInputs.map((i) => i.name!)];
  for (const i of order) for (const o of nodes[i].output ?? []) if (o) carriedOrder.push(o);
  const boundary = (k: number): string[] => carriedOrder.filter((t) => (producedIn.get(t) ?? Infinity) <= k && (neededUntil.get(t) ?? -1) > k);

  const shared = new Set(opts.sharedParameters ?? []);
  const parameterOf = (name: string) => parameterStage.has(name) || shared.has(name);
  const modelInputs = graphInputs.map((i) => stageTensor(i.name!, -1, 0));
  const modelOutputs = graphOutputs.map((o) => stageTensor(o.name!, producedIn.get(o.name!) ?? 0, P - 1));
  const stages: PipelineStage[] = [];
  let previousOutputs = modelInputs;
  for (let s = 0; s < P; s++) {
    const outputs = s === P - 1 ? modelOutputs : boundary(s).map((t) => stageTensor(t, producedIn.get(t)!, s + 1));
    const used = new Set(stageNodes[s].flatMap((i) => reads[i]));
    if (s === P - 1) for (const o of graphOutputs) if (o.name && initializerNames.has(o.name)) used.add(o.name);
    const initializers = initializerOrder.filter((n) => used.has(n));
    stages.push({ stage: s, nodes: stageNodes[s], inputs: previousOutputs, outputs, initializers, parameters: initializers.filter(parameterOf) });
    previousOutputs = outputs;
  }
  return { stageCount: P, by, inputs: modelInputs, outputs: modelOutputs, stages };
}

/**
 * The ONNX model of one stage, with the initializers of the original model (not yet bound to
 * checkpoint weights; see bind.ts). Inputs and outputs as the plan says.
 */
export function extractStageModel(model: OnnxModel, plan: PipelinePlan, stage: number): OnnxModel {
  const graph = model.graph!;
  const s = plan.stages[stage];
  if (!s) throw new ShardserveError('Usage', `stage ${stage} is not in the plan (stages 0..${plan.stageCount - 1})`);
  const nodes = graph.node ?? [];
  const wanted = new Set(s.initializers);
  const stageNodeList = s.nodes.map((i) => nodes[i]);
  const internal = new Set(stageNodeList.flatMap((n) => n.output ?? []));
  const declared = new Map<string, ValueInfoProto>();
  for (const v of [...(graph.input ?? []), ...(graph.output ?? [])]) if (v.name) declared.set(v.name, v);
  const io = (t: StageTensor): ValueInfoProto => {
    const original = declared.get(t.name);
    // Keep the model's own declaration (it may carry denotations or docs) when there is one.
    return original?.type?.tensorType ? { ...original } : tensorValueInfo(t.name, t.elemType, t.shape);
  };
  const boundaryNames = new Set([...s.inputs, ...s.outputs].map((t) => t.name));
  const stageGraph: GraphProto = {
    name: `${graph.name ?? 'graph'}_stage${stage}`,
    node: stageNodeList,
    input: s.inputs.map(io),
    output: s.outputs.map(io),
    initializer: (graph.initializer ?? []).filter((t) => wanted.has(t.name ?? '')),
  };
  const sparse = (graph.sparseInitializer ?? []).filter((t) => wanted.has(t.values?.name ?? ''));
  if (sparse.length) stageGraph.sparseInitializer = sparse;
  const valueInfo = (graph.valueInfo ?? []).filter((v) => v.name && internal.has(v.name) && !boundaryNames.has(v.name));
  if (valueInfo.length) stageGraph.valueInfo = valueInfo;
  if (graph.docString) stageGraph.docString = graph.docString;
  const out: OnnxModel = { ...model, graph: stageGraph };
  // IR < 4 wants every initializer listed as a graph input; a stage lists only its real inputs.
  if (out.irVersion !== undefined && out.irVersion < 4) out.irVersion = 4;
  return out;
}
