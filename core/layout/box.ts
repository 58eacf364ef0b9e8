import { ShardserveError } from '../errors.js';
import type { ParamLayout } from '../strategy/types.js';

/**
 * The part of a full tensor one rank holds: `offsets[i]` .. `offsets[i] + sizes[i]` on every dim.
 * A scalar has empty offsets and sizes.
 */
export interface Box {
  offsets: number[];
  sizes: number[];
}

/** Where a layout came from, for error messages. */
export interface LayoutContext {
  param?: string;
  file?: string;
}

function layoutError(code: string, message: string, ctx: LayoutContext): ShardserveError {
  const where = ctx.param ? `parameter '${ctx.param}'` : 'layout';
  const prefix = ctx.file ? `${ctx.file}: ${where}` : where;
  return new ShardserveError(code, `${prefix}: ${message}`, { file: ctx.file, param: ctx.param });
}

/** Row-major coordinate of a local rank in the device matrix (last axis fastest). */
export function rankCoordinate(devMatrix: readonly number[], localRank: number): number[] {
  const coord = new Array<number>(devMatrix.length).fill(0);
  let r = localRank;
  for (let i = devMatrix.length - 1; i >= 0; i--) {
    coord[i] = r % devMatrix[i];
    r = Math.floor(r / devMatrix[i]);
  }
  return coord;
}

export function product(xs: readonly number[]): number {
  let p = 1;
  for (const x of xs) p *= x;
  return p;
}

/**
 * Device-matrix axes (indices from the left) that split each tensor dim, outermost first.
 * A tensor-map value m names the axis devMatrix[n-1-m] (counted from the right); -1 = not split.
 */
export function splitAxes(layout: ParamLayout, ctx: LayoutContext = {}): number[][] {
  const n = layout.devMatrix.length;
  const seen = new Set<number>();
  return layout.tensorMap.map((entry) => {
    const values = Array.isArray(entry) ? entry : [entry];
    const axes: number[] = [];
    for (const m of values) {
      if (m === -1) continue;
      if (!Number.isInteger(m) || m < 0 || m >= n) {
        throw layoutError('BadLayout', `tensor_map value ${m} is outside dev_matrix [${layout.devMatrix.join(',')}] (expected -1 or 0..${n - 1})`, ctx);
      }
      const axis = n - 1 - m;
      if (seen.has(axis)) throw layoutError('BadLayout', `tensor_map [${JSON.stringify(layout.tensorMap)}] uses device axis ${m} twice`, ctx);
      seen.add(axis);
      axes.push(axis);
    }
    return axes;
  });
}

/** Number of model-parallel parts of every tensor dim (MindSpore's "strategy"). */
export function tensorStrategy(layout: ParamLayout, ctx: LayoutContext = {}): number[] {
  return splitAxes(layout, ctx).map((axes) => product(axes.map((a) => layout.devMatrix[a])));
}

/** The optimizer-shard split of dim 0: how many pieces, and this rank's piece. */
export interface OptShard {
  /** Number of pieces (k); 1 when the layout has no optimizer sharding. */
  count: number;
  /** Device axes (and how much of each, the inner factor) that index the pieces, outermost first. */
  axes: { axis: number; factor: number }[];
}

/**
 * MindSpore's optimizer sharding of a parameter (reference §2.4): the replicated device axes, taken
 * from the right and split into (outer, inner) when only part of one is needed, index k pieces of
 * dim 0 of the model-parallel slice. size -1 = the whole redundancy group.
 */
export function optShard(layout: ParamLayout, ctx: LayoutContext = {}): OptShard {
  const size = layout.optShardSize;
  if (!size || !layout.optShardStep) return { count: 1, axes: [] };
  const referenced = new Set(splitAxes(layout, ctx).flat());
  const repeated = layout.devMatrix.map((d, i) => i).filter((i) => !referenced.has(i) && layout.devMatrix[i] > 1);
  if (repeated.length === 0) {
    throw layoutError('BadLayout', `dev_matrix [${layout.devMatrix.join(',')}] and tensor_map ${JSON.stringify(layout.tensorMap)} leave no replicated axis for opt_weight_shard_size ${size}`, ctx);
  }
  const flat = layout.tensorMap.every((m) => !Array.isArray(m));
  if (flat && repeated.length === 1) {
    const mp = product(layout.devMatrix.slice(repeated[0] + 1));
    if (mp !== layout.optShardStep) {
      throw layoutError('BadLayout', `opt_weight_shard_step ${layout.optShardStep} is not equal to the model parallel sharding size ${mp}`, ctx);
    }
  }
  let remaining = size === -1 ? product(repeated.map((i) => layout.devMatrix[i])) : size;
  if (!Number.isInteger(remaining) || remaining < 1) throw layoutError('BadLayout', `opt_weight_shard_size ${size} is not a positive integer or -1`, ctx);
  const count = remaining;
  const axes: { axis: number; factor: number }[] = [];
  for (let j = repeated.length - 1; j >= 0 && remaining > 1; j--) {
    const d = layout.devMatrix[repeated[j]];
    let factor = d;
    if (remaining < d) {
      if (d % remaining !== 0) throw layoutError('BadLayout', `dev_matrix value ${d} cannot be divided by the needed opt sharding size ${remaining}`, ctx);
      factor = remaining;
    } else if (remaining % d !== 0) {
      throw layoutError('BadLayout', `remaining opt sharding size ${remaining} cannot be divided by dev_matrix value ${d}`, ctx);
    }
    remaining /= factor;
    axes.unshift({ axis: repeated[j], factor });
  }
  if (remaining !== 1) {
    throw layoutError('BadLayout', `opt_weight_shard_size ${size} is larger than the replicated device axes allow (${count / remaining})`, ctx);
  }
  return { count, axes };
}

/** This rank's optimizer-shard piece index (mixed radix over the inner factors, outermost first). */
export function optShardIndex(shard: OptShard, coord: readonly number[]): number {
  let idx = 0;
  for (const { axis, factor } of shard.axes) idx = idx * factor + (coord[axis] % factor);
  return idx;
}

function checkRank(layout: ParamLayout, shapeRank: number, ctx: LayoutContext, allowField = false): void {
  if (layout.tensorMap.length !== shapeRank) {
    throw layoutError('LayoutMismatch', `tensor_map ${JSON.stringify(layout.tensorMap)} has ${layout.tensorMap.length} dims but the tensor has ${shapeRank}`, ctx);
  }
  if (layout.field > 0 && !allowField) throw layoutError('Unsupported', `field-split layouts (field=${layout.field}) are only supported as a source`, ctx);
  const uneven = layout.paramSplitShape.length > 0;
  if (uneven && layout.paramSplitShape.length !== layout.indicesOffset.length) {
    throw layoutError('BadLayout', `param_split_shape has ${layout.paramSplitShape.length} entries but indices_offset has ${layout.indicesOffset.length}`, ctx);
  }
}

/** Row-major index of a rank's slice among the distinct slices (reference §2.3/§2.5). */
function sliceIndex(parts: readonly number[], strategy: readonly number[]): number {
  let j = 0;
  for (let i = 0; i < parts.length; i++) j = j * strategy[i] + parts[i];
  return j;
}

/** Model-parallel part index of every dim for one rank. */
function rankParts(layout: ParamLayout, coord: readonly number[], ctx: LayoutContext): number[] {
  return splitAxes(layout, ctx).map((axes) => {
    let p = 0;
    for (const a of axes) p = p * layout.devMatrix[a] + coord[a];
    return p;
  });
}

function checkLocalRank(layout: ParamLayout, localRank: number, ctx: LayoutContext): void {
  const devices = product(layout.devMatrix);
  if (!Number.isInteger(localRank) || localRank < 0 || localRank >= devices) {
    throw layoutError('BadRank', `rank ${localRank} is outside the stage's ${devices} devices (dev_matrix [${layout.devMatrix.join(',')}])`, ctx);
  }
}

/**
 * The full (global) shape implied by one rank's slice shape: slice × strategy on every dim, and
 * × the optimizer-shard count on dim 0; for a manual uneven split, dim 0 from indices_offset.
 */
export function fullShapeFromSlice(layout: ParamLayout, sliceShape: readonly number[], localRank: number, ctx: LayoutContext = {}): number[] {
  checkRank(layout, sliceShape.length, ctx, true);
  checkLocalRank(layout, localRank, ctx);
  const strategy = tensorStrategy(layout, ctx);
  const full = sliceShape.map((s, i) => s * strategy[i]);
  if (sliceShape.length === 0) return full;
  const shard = optShard(layout, ctx);
  if (layout.paramSplitShape.length > 0) {
    if (shard.count > 1) throw layoutError('Unsupported', 'optimizer sharding together with param_split_shape is not supported', ctx);
    const coord = rankCoordinate(layout.devMatrix, localRank);
    const j = sliceIndex(rankParts(layout, coord, ctx), strategy);
    if (layout.paramSplitShape.length !== product(strategy)) {
      throw layoutError('BadLayout', `param_split_shape has ${layout.paramSplitShape.length} entries but the layout has ${product(strategy)} distinct slices`, ctx);
    }
    if (sliceShape[0] !== layout.paramSplitShape[j]) {
      throw layoutError('ShapeMismatch', `slice ${j} has ${sliceShape[0]} rows but param_split_shape says ${layout.paramSplitShape[j]}`, ctx);
    }
    full[0] = Math.max(...layout.paramSplitShape.map((len, k) => layout.indicesOffset[k] + len));
  } else {
    full[0] *= shard.count;
  }
  return full;
}

/** The box rank `localRank` (its index inside its pipeline stage) holds of a tensor of `fullShape`. */
export function rankBox(layout: ParamLayout, fullShape: readonly number[], localRank: number, ctx: LayoutContext = {}): Box {
  checkRank(layout, fullShape.length, ctx);
  checkLocalRank(layout, localRank, ctx);
  if (fullShape.length === 0) return { offsets: [], sizes: [] };
  const strategy = tensorStrategy(layout, ctx);
  const coord = rankCoordinate(layout.devMatrix, localRank);
  const parts = rankParts(layout, coord, ctx);
  const offsets: number[] = [];
  const sizes: number[] = [];
  for (let i = 0; i < fullShape.length; i++) {
    if (fullShape[i] % strategy[i] !== 0 && !(i === 0 && layout.paramSplitShape.length > 0)) {
      throw layoutError('NotDivisible', `dim ${i} of size ${fullShape[i]} cannot be split into ${strategy[i]} equal parts`, ctx);
    }
    const len = fullShape[i] / strategy[i];
    offsets.push(parts[i] * len);
    sizes.push(len);
  }
  if (layout.paramSplitShape.length > 0) {
    const j = sliceIndex(parts, strategy);
    if (layout.paramSplitShape.length !== product(strategy)) {
      throw layoutError('BadLayout', `param_split_shape has ${layout.paramSplitShape.length} entries but the layout has ${product(strategy)} distinct slices`, ctx);
    }
    offsets[0] = layout.indicesOffset[j];
    sizes[0] = layout.paramSplitShape[j];
    if (offsets[0] < 0 || sizes[0] < 0 || offsets[0] + sizes[0] > fullShape[0]) {
      throw layoutError('BadLayout', `uneven slice ${j} (rows ${offsets[0]}..${offsets[0] + sizes[0]}) is outside dim 0 of size ${fullShape[0]}`, ctx);
    }
  }
  const shard = optShard(layout, ctx);
  if (shard.count > 1) {
    if (layout.paramSplitShape.length > 0) throw layoutError('Unsupported', 'optimizer sharding together with param_split_shape is not supported', ctx);
    if (sizes[0] % shard.count !== 0) {
      throw layoutError('NotDivisible', `dim 0 slice of ${sizes[0]} rows cannot be split into ${shard.count} optimizer shards`, ctx);
    }
    sizes[0] /= shard.count;
    offsets[0] += optShardIndex(shard, coord) * sizes[0];
  }
  return { offsets, sizes };
}

export function boxKey(box: Box): string {
  return `${box.offsets.join(',')}|${box.sizes.join(',')}`;
}

export function boxElements(box: Box): number {
  return product(box.sizes);
}

/** The overlap of two boxes, or undefined when they do not overlap (a scalar box overlaps itself). */
export function intersectBoxes(a: Box, b: Box): Box | undefined {
  const offsets: number[] = [];
  const sizes: number[] = [];
  for (let i = 0; i < a.offsets.length; i++) {
    const lo = Math.max(a.offsets[i], b.offsets[i]);
    const hi = Math.min(a.offsets[i] + a.sizes[i], b.offsets[i] + b.sizes[i]);
    if (hi <= lo) return undefined;
    offsets.push(lo);
    sizes.push(hi - lo);
  }
  return { offsets, sizes };
}

/** A distinct piece of a tensor and the local ranks that hold exactly it (its redundancy group). */
export interface DistinctPiece {
  box: Box;
  holders: number[];
}

/** Every distinct box of a layout, with its holders, in order of first holder. */
export function distinctPieces(layout: ParamLayout, fullShape: readonly number[], ctx: LayoutContext = {}): DistinctPiece[] {
  const byKey = new Map<string, DistinctPiece>();
  const devices = product(layout.devMatrix);
  for (let r = 0; r < devices; r++) {
    const box = rankBox(layout, fullShape, r, ctx);
    const key = boxKey(box);
    const piece = byKey.get(key);
    if (piece) piece.holders.push(r);
    else byKey.set(key, { box, holders: [r] });
  }
  return [...byKey.values()];
}

/**
 * A field-split layout (`field` = f > 0, wide&deep embedding tables, reference §2.5) in the view where
 * it is an ordinary layout: dim 0 of the full tensor is seen as [f, full0 / f] and the split applies to
 * the inner part, so a rank holds rows of every field block. The C-order bytes of the full tensor and
 * of every rank's slice are the same in both views.
 */
export function fieldView(layout: ParamLayout, fullShape: readonly number[], ctx: LayoutContext = {}): { layout: ParamLayout; fullShape: number[] } {
  const f = layout.field;
  if (fullShape.length === 0 || fullShape[0] % f !== 0) {
    throw layoutError('BadLayout', `field ${f} does not divide dim 0 of full shape [${fullShape.join(',')}]`, ctx);
  }
  if (layout.paramSplitShape.length > 0 || (layout.optShardSize && layout.optShardStep)) {
    throw layoutError('Unsupported', `field ${f} together with an uneven split or optimizer sharding is not supported`, ctx);
  }
  return {
    layout: { ...layout, field: 0, tensorMap: [-1, ...layout.tensorMap], tensorShape: undefined },
    fullShape: [f, fullShape[0] / f, ...fullShape.slice(1)],
  };
}
