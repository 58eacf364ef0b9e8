/**
 * Element types and static shapes of a graph's tensors, so every tensor that crosses a pipeline
 * boundary can be declared as a typed stage input/output. What the model declares (inputs, outputs,
 * value_info, initializers) wins; the rest is inferred for the common operators. Dims are numbers when
 * static, strings when symbolic (e.g. the batch), null when unknown; a null shape means unknown rank.
 */
import type { GraphProto, NodeProto, TensorProto } from './model.js';
import { OnnxDataType, tensorTypeOf } from './model.js';

export type Dim = number | string | null;
export type Shape = Dim[] | null;
export interface TensorType { elemType?: number; shape: Shape }

const SAME_AS_FIRST = new Set([
  'Relu', 'Tanh', 'Sigmoid', 'Erf', 'Exp', 'Log', 'Sqrt', 'Neg', 'Abs', 'Reciprocal', 'Identity', 'Dropout',
  'Gelu', 'Softplus', 'Softsign', 'LeakyRelu', 'Elu', 'Selu', 'Celu', 'HardSigmoid', 'HardSwish', 'Clip', 'Floor',
  'Ceil', 'Round', 'Sin', 'Cos', 'Tan', 'Softmax', 'LogSoftmax', 'LayerNormalization', 'BatchNormalization',
  'InstanceNormalization', 'Not', 'Sign', 'Mish', 'ThresholdedRelu', 'SimplifiedLayerNormalization',
  'SkipLayerNormalization', 'FastGelu', 'BiasGelu', 'QuickGelu', 'CumSum', 'IsNaN', 'IsInf',
]);
const BROADCAST = new Set(['Add', 'Sub', 'Mul', 'Div', 'Pow', 'Max', 'Min', 'Mean', 'Sum', 'Mod', 'PRelu', 'BitShift']);
const COMPARE = new Set(['Equal', 'Less', 'Greater', 'LessOrEqual', 'GreaterOrEqual', 'And', 'Or', 'Xor']);
const REDUCE = new Set(['ReduceMean', 'ReduceSum', 'ReduceMax', 'ReduceMin', 'ReduceProd', 'ReduceL1', 'ReduceL2', 'ReduceSumSquare', 'ReduceLogSumExp']);
const BOOL_OUT = new Set(['IsNaN', 'IsInf']);

/** Small integer constants (shape arguments) known from initializers and Constant nodes. */
function intValues(t: TensorProto): number[] | undefined {
  if (t.dataType !== OnnxDataType.INT64 && t.dataType !== OnnxDataType.INT32) return undefined;
  if (t.int64Data) return t.int64Data.map(Number);
  if (t.int32Data) return t.int32Data;
  const raw = t.rawData;
  if (!raw) return t.dims && t.dims.reduce((a, b) => a * b, 1) === 0 ? [] : undefined;
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out: number[] = [];
  if (t.dataType === OnnxDataType.INT64) for (let o = 0; o + 8 <= raw.byteLength; o += 8) out.push(Number(view.getBigInt64(o, true)));
  else for (let o = 0; o + 4 <= raw.byteLength; o += 4) out.push(view.getInt32(o, true));
  return out;
}

function attr(node: NodeProto, name: string) {
  return node.attribute?.find((a) => a.name === name);
}
function intAttr(node: NodeProto, name: string, dflt: number): number {
  const a = attr(node, name);
  return a?.i === undefined ? dflt : Number(a.i);
}
function intsAttr(node: NodeProto, name: string): number[] | undefined {
  return attr(node, name)?.ints?.map(Number);
}

function broadcast(shapes: Shape[]): Shape {
  if (shapes.some((s) => s === null)) return null;
  const rank = Math.max(...shapes.map((s) => s!.length));
  const out: Dim[] = [];
  for (let i = 0; i < rank; i++) {
    let dim: Dim = 1;
    for (const s of shapes) {
      const d = s![s!.length - rank + i];
      if (d === undefined || d === 1) continue;
      if (dim === 1) dim = d;
      else if (dim !== d) dim = typeof dim === 'number' && typeof d === 'number' ? dim : (typeof d === 'number' ? d : typeof dim === 'number' ? dim : null);
    }
    out.push(dim);
  }
  return out;
}

function normAxis(axis: number, rank: number): number {
  return axis < 0 ? axis + rank : axis;
}

function product(dims: Dim[]): number | null {
  let p = 1;
  for (const d of dims) {
    if (typeof d !== 'number') return null;
    p *= d;
  }
  return p;
}

function inferNode(node: NodeProto, typeOf: (n: string) => TensorType | undefined, constOf: (n: string) => number[] | undefined): Array<TensorType | undefined> {
  const op = node.opType ?? '';
  const ins = (node.input ?? []).map((n) => (n === '' ? undefined : typeOf(n)));
  const first = ins[0];
  const shapeOf = (i: number): Shape => ins[i]?.shape ?? null;
  const outs = node.output ?? [];
  const one = (t: TensorType | undefined) => [t, ...outs.slice(1).map(() => undefined)];

  if ((node.domain ?? '') !== '' && node.domain !== 'ai.onnx' && node.domain !== 'com.microsoft') return outs.map(() => undefined);
  if (SAME_AS_FIRST.has(op)) {
    return one(first && { elemType: BOOL_OUT.has(op) ? OnnxDataType.BOOL : first.elemType, shape: first.shape });
  }
  if (BROADCAST.has(op)) return one({ elemType: first?.elemType, shape: broadcast(ins.map((t) => t?.shape ?? null)) });
  if (COMPARE.has(op)) return one({ elemType: OnnxDataType.BOOL, shape: broadcast(ins.map((t) => t?.shape ?? null)) });
  switch (op) {
    case 'Where':
      return one({ elemType: ins[1]?.elemType, shape: broadcast(ins.map((t) => t?.shape ?? null)) });
    case 'Cast':
      return one({ elemType: intAttr(node, 'to', 0), shape: shapeOf(0) });
    case 'CastLike':
      return one({ elemType: ins[1]?.elemType, shape: shapeOf(0) });
    case 'MatMul': {
      const a = shapeOf(0), b = shapeOf(1);
      if (!a || !b) return one({ elemType: first?.elemType, shape: null });
      const a2 = a.length === 1 ? [1, a[0]] : a, b2 = b.length === 1 ? [b[0], 1] : b;
      const batch = broadcast([a2.slice(0, -2), b2.slice(0, -2)]) ?? [];
      const shape: Dim[] = [...batch];
      if (a.length > 1) shape.push(a2[a2.length - 2]);
      if (b.length > 1) shape.push(b2[b2.length - 1]);
      return one({ elemType: first?.elemType, shape });
    }
    case 'Gemm': {
      const a = shapeOf(0), b = shapeOf(1);
      const m = a ? a[intAttr(node, 'transA', 0) ? 1 : 0] : null;
      const n = b ? b[intAttr(node, 'transB', 0) ? 0 : 1] : null;
      return one({ elemType: first?.elemType, shape: [m ?? null, n ?? null] });
    }
    case 'Transpose': {
      const s = shapeOf(0);
      if (!s) return one({ elemType: first?.elemType, shape: null });
      const perm = intsAttr(node, 'perm') ?? s.map((_, i) => s.length - 1 - i);
      return one({ elemType: first?.elemType, shape: perm.map((p) => s[p] ?? null) });
    }
    case 'Reshape': {
      const target = constOf(node.input?.[1] ?? '');
      const s = shapeOf(0);
      if (!target) return one({ elemType: first?.elemType, shape: null });
      const allowZero = intAttr(node, 'allowzero', 0);
      const dims: Dim[] = target.map((d, i) => (d === 0 && !allowZero ? (s?.[i] ?? null) : d === -1 ? -1 : d));
      const minus = dims.indexOf(-1);
      if (minus >= 0) {
        const total = s ? product(s) : null;
        const rest = product(dims.filter((_, i) => i !== minus));
        dims[minus] = total !== null && rest !== null && rest !== 0 ? total / rest : null;
        // A symbolic batch carried through a reshape that keeps the other dims: keep its name.
        if (dims[minus] === null && s && minus === 0 && typeof s[0] === 'string' && rest !== null && product(s.slice(1)) === rest) dims[minus] = s[0];
      }
      return one({ elemType: first?.elemType, shape: dims });
    }
    case 'Flatten': {
      const s = shapeOf(0);
      if (!s) return one({ elemType: first?.elemType, shape: null });
      const axis = normAxis(intAttr(node, 'axis', 1), s.length);
      const lead = axis === 0 ? 1 : product(s.slice(0, axis)) ?? (axis === 1 ? s[0] : null);
      return one({ elemType: first?.elemType, shape: [lead, product(s.slice(axis))] });
    }
    case 'Concat': {
      const shapes = ins.map((t) => t?.shape ?? null);
      if (shapes.some((s) => !s)) return one({ elemType: first?.elemType, shape: null });
      const rank = shapes[0]!.length;
      const axis = normAxis(intAttr(node, 'axis', 0), rank);
      const shape = [...shapes[0]!];
      const sizes = shapes.map((s) => s![axis]);
      shape[axis] = sizes.every((d) => typeof d === 'number') ? (sizes as number[]).reduce((a, b) => a + b, 0) : null;
      return one({ elemType: first?.elemType, shape });
    }
    case 'Unsqueeze': {
      const s = shapeOf(0);
      const axes = intsAttr(node, 'axes') ?? constOf(node.input?.[1] ?? '');
      if (!s || !axes) return one({ elemType: first?.elemType, shape: null });
      const rank = s.length + axes.length;
      const set = new Set(axes.map((a) => normAxis(a, rank)));
      const shape: Dim[] = [];
      let j = 0;
      for (let i = 0; i < rank; i++) shape.push(set.has(i) ? 1 : s[j++]);
      return one({ elemType: first?.elemType, shape });
    }
    case 'Squeeze': {
      const s = shapeOf(0);
      const axes = intsAttr(node, 'axes') ?? constOf(node.input?.[1] ?? '');
      if (!s) return one({ elemType: first?.elemType, shape: null });
      if (!axes) return one({ elemType: first?.elemType, shape: s.some((d) => typeof d !== 'number') ? null : s.filter((d) => d !== 1) });
      const set = new Set(axes.map((a) => normAxis(a, s.length)));
      return one({ elemType: first?.elemType, shape: s.filter((_, i) => !set.has(i)) });
    }
    case 'Shape': {
      const s = shapeOf(0);
      return one({ elemType: OnnxDataType.INT64, shape: [s ? s.length : null] });
    }
    case 'Size':
      return one({ elemType: OnnxDataType.INT64, shape: [] });
    case 'Constant': {
      const t = attr(node, 'value')?.t;
      if (t) return one({ elemType: t.dataType, shape: t.dims ?? [] });
      const a = node.attribute?.[0];
      if (a?.name === 'value_float') return one({ elemType: OnnxDataType.FLOAT, shape: [] });
      if (a?.name === 'value_int') return one({ elemType: OnnxDataType.INT64, shape: [] });
      if (a?.name === 'value_floats') return one({ elemType: OnnxDataType.FLOAT, shape: [a.floats?.length ?? 0] });
      if (a?.name === 'value_ints') return one({ elemType: OnnxDataType.INT64, shape: [a.ints?.length ?? 0] });
      return one(undefined);
    }
    case 'Gather': {
      const s = shapeOf(0), idx = shapeOf(1);
      if (!s || !idx) return one({ elemType: first?.elemType, shape: null });
      const axis = normAxis(intAttr(node, 'axis', 0), s.length);
      return one({ elemType: first?.elemType, shape: [...s.slice(0, axis), ...idx, ...s.slice(axis + 1)] });
    }
    case 'ArgMax': case 'ArgMin': {
      const s = shapeOf(0);
      if (!s) return one({ elemType: OnnxDataType.INT64, shape: null });
      const axis = normAxis(intAttr(node, 'axis', 0), s.length);
      const keep = intAttr(node, 'keepdims', 1);
      return one({ elemType: OnnxDataType.INT64, shape: keep ? s.map((d, i) => (i === axis ? 1 : d)) : s.filter((_, i) => i !== axis) });
    }
    case 'Expand': case 'Slice': case 'Tile': case 'Pad': case 'Resize': case 'Split':
      return outs.map(() => ({ elemType: first?.elemType, shape: shapeOf(0) ? shapeOf(0)!.map(() => null) : null }));
    case 'TopK':
      return [{ elemType: first?.elemType, shape: null }, { elemType: OnnxDataType.INT64, shape: null }];
    case 'NonZero':
      return one({ elemType: OnnxDataType.INT64, shape: [shapeOf(0)?.length ?? null, null] });
  }
  if (REDUCE.has(op)) {
    const s = shapeOf(0);
    if (!s) return one({ elemType: first?.elemType, shape: null });
    const axes = intsAttr(node, 'axes') ?? constOf(node.input?.[1] ?? '');
    const keep = intAttr(node, 'keepdims', 1);
    if (!axes || axes.length === 0) {
      if (intAttr(node, 'noop_with_empty_axes', 0)) return one({ elemType: first?.elemType, shape: s });
      return one({ elemType: first?.elemType, shape: keep ? s.map(() => 1) : [] });
    }
    const set = new Set(axes.map((a) => normAxis(a, s.length)));
    return one({ elemType: first?.elemType, shape: keep ? s.map((d, i) => (set.has(i) ? 1 : d)) : s.filter((_, i) => !set.has(i)) });
  }
  return outs.map(() => undefined);
}

/**
 * Types of every tensor in a (top-level) graph: declared ones first, then inferred in node order.
 * Tensors whose element type cannot be found are absent from the map.
 */
export function inferTensorTypes(graph: GraphProto, nodeOrder?: number[]): Map<string, TensorType> {
  const types = new Map<string, TensorType>();
  const declared = new Set<string>();
  const consts = new Map<string, number[]>();
  for (const t of graph.initializer ?? []) {
    if (!t.name) continue;
    types.set(t.name, { elemType: t.dataType, shape: t.dims ?? [] });
    declared.add(t.name);
    if ((t.dims ?? []).length <= 1 && (t.dims?.[0] ?? 1) <= 64) {
      const v = intValues(t);
      if (v) consts.set(t.name, v);
    }
  }
  for (const info of [...(graph.input ?? []), ...(graph.valueInfo ?? []), ...(graph.output ?? [])]) {
    const tt = tensorTypeOf(info);
    if (info.name && tt && tt.elemType) {
      types.set(info.name, { elemType: tt.elemType, shape: tt.shape ?? null });
      declared.add(info.name);
    }
  }
  const nodes = graph.node ?? [];
  for (const i of nodeOrder ?? nodes.map((_, k) => k)) {
    const node = nodes[i];
    if (node.opType === 'Constant' && node.output?.[0]) {
      const t = attr(node, 'value')?.t;
      const ints = attr(node, 'value_ints')?.ints;
      const v = t ? intValues(t) : ints?.map(Number);
      if (v && v.length <= 64) consts.set(node.output[0], v);
    }
    const inferred = inferNode(node, (n) => types.get(n), (n) => consts.get(n));
    (node.output ?? []).forEach((name, k) => {
      if (!name || declared.has(name)) {
        // A declared type without a shape can still learn its shape from inference.
        const have = types.get(name);
        const got = inferred[k];
        if (have && have.shape === null && got?.shape) types.set(name, { elemType: have.elemType, shape: got.shape });
        return;
      }
      const t = inferred[k];
      if (t && t.elemType) types.set(name, t);
    });
  }
  return types;
}
