import type { ByteRange, TensorEntry } from '../checkpoint/types.js';
import { DTYPE_BYTES, type DType, sameShape } from '../dtype.js';
import { ShardserveError } from '../errors.js';
import { type Box, distinctPieces, fieldView, fullShapeFromSlice, intersectBoxes, product, rankBox } from '../layout/box.js';
import type { ParamLayout, Strategy } from '../strategy/types.js';
import { coalesceRanges, copyForOverlap, type CopyOp, forEachRun, runCount, sourceSpan, tensorRunToFile } from './runs.js';

/** One source checkpoint file (one training rank), indexed. */
export interface SourceFile {
  /** Global training rank (stage × stage devices + local). */
  rank: number;
  uri: string;
  tensors: Map<string, TensorEntry>;
}

/** Where the destination layout comes from: a strategy (file or derived by `layout`) or one device. */
export type Destination = { kind: 'single' } | { kind: 'strategy'; strategy: Strategy };

/** What one destination tensor is made of. */
export interface TensorPlan {
  name: string;
  dtype: DType;
  /** Shape of the destination slice (the full shape for a single device). */
  shape: number[];
  fullShape: number[];
  /** Where the slice sits in the full tensor. */
  box: Box;
  byteLength: number;
  /** Copies from source tensors (each names its source rank; the source tensor has the same name). */
  copies: CopyOp[];
}

/** Byte ranges one source file is read at. */
export interface FileReads {
  rank: number;
  uri: string;
  /** Sorted, coalesced. */
  ranges: ByteRange[];
  bytes: number;
}

export interface ReadPlan {
  /** Destination rank (0 for a single device). */
  rank: number;
  /** Its pipeline stage. */
  stage: number;
  tensors: TensorPlan[];
  files: FileReads[];
  /** Payload bytes read from source files. */
  readBytes: number;
  /** Bytes of the destination slice. */
  sliceBytes: number;
  /** Things worth telling the user (skipped parameters, ...). */
  notes: string[];
}

export interface PlanInput {
  source: Strategy;
  /** Indexed source files by global rank; only those of the stages the destination touches are needed. */
  files: Map<number, SourceFile>;
  destination: Destination;
  /** Destination rank (ignored for a single device). */
  rank: number;
  /**
   * The destination parameters to plan, by name (default: all of them). A rank running a network
   * plans only the tensors its network uses: a training checkpoint also holds optimizer states and
   * counters (moments, global_step, ...), which a strategy usually leaves out and which would
   * otherwise be carried whole.
   */
  only?: ReadonlySet<string>;
}

/** Pipeline stage and local index of a destination rank. */
export function destinationStage(destination: Destination, rank: number): { stage: number; local: number; world: number } {
  if (destination.kind === 'single') return { stage: 0, local: 0, world: 1 };
  const { stageDevices, stageCount } = destination.strategy;
  const world = stageDevices * stageCount;
  if (!Number.isInteger(rank) || rank < 0 || rank >= world) {
    throw new ShardserveError('BadRank', `--rank ${rank} is outside the destination's ${world} ranks (${stageCount} stage(s) × ${stageDevices})`);
  }
  return { stage: Math.floor(rank / stageDevices), local: rank % stageDevices, world };
}

/** Destination parameter names, in order, with the destination layout (undefined = whole tensor). */
function destinationParams(input: PlanInput, stage: number): Array<{ name: string; layout?: ParamLayout }> {
  const { destination, source } = input;
  const out: Array<{ name: string; layout?: ParamLayout }> = [];
  const seen = new Set<string>();
  if (destination.kind === 'strategy') {
    for (const p of destination.strategy.params.values()) {
      const layout = p.layoutByStage.get(stage);
      if (layout) {
        out.push({ name: p.name, layout });
        seen.add(p.name);
      }
    }
  } else {
    for (const p of source.params.values()) {
      out.push({ name: p.name });
      seen.add(p.name);
    }
  }
  // Values in no strategy (global_step, learning_rate, ...) are carried whole, as MindSpore does.
  const extra = new Set<string>();
  for (const f of sortedFiles(input.files)) {
    for (const name of f.tensors.keys()) {
      if (!seen.has(name) && !source.params.has(name) && !(destination.kind === 'strategy' && destination.strategy.params.has(name))) extra.add(name);
    }
  }
  for (const name of [...extra].sort()) out.push({ name });
  if (input.only) return out.filter((p) => input.only!.has(p.name));
  return out;
}

/** A layout's memo key within a plan, kept per layout object (parsed layouts are not changed). */
const layoutKeys = new WeakMap<ParamLayout, string>();
function layoutKey(layout: ParamLayout): string {
  let key = layoutKeys.get(layout);
  if (key === undefined) {
    key = JSON.stringify(layout);
    layoutKeys.set(layout, key);
  }
  return key;
}

function sortedFiles(files: Map<number, SourceFile>): SourceFile[] {
  return [...files.values()].sort((a, b) => a.rank - b.rank);
}

/** The source stage a parameter is read from: the destination's stage when it has one, else its lowest. */
function sourceStageOf(source: Strategy, name: string, stage: number): number | undefined {
  const p = source.params.get(name);
  if (!p) return undefined;
  if (p.layoutByStage.has(stage)) return stage;
  return Math.min(...p.stages);
}

function replicatedLayout(rankCount: number, dims: number): ParamLayout {
  return { devMatrix: [rankCount], tensorMap: new Array(dims).fill(-1), paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 };
}

const shapeText = (s: readonly number[]) => `[${s.join(',')}]`;

/**
 * The read plan of one destination rank: for each of its tensors, which distinct source pieces
 * overlap its box, one holder per piece, and the exact byte ranges of the holders' files.
 */
export function planRank(input: PlanInput): ReadPlan {
  const { source, files, destination } = input;
  const { stage, local } = destinationStage(destination, input.rank);
  const notes: string[] = [];
  const tensors: TensorPlan[] = [];
  const stageDevices = source.stageDevices;
  // Layers repeat their layouts: the pieces of a (layout, shape) and a destination box are computed
  // once per plan, not once per parameter (they do not depend on its name; errors are not cached).
  const memo = new Map<string, unknown>();
  const once = <T>(key: string, make: () => T): T => {
    if (memo.has(key)) return memo.get(key) as T;
    const value = make();
    memo.set(key, value);
    return value;
  };
  const ordered = sortedFiles(files);
  const filesOfStage = (s: number) => once(`files ${s}`, () => ordered.filter((f) => f.rank >= s * stageDevices && f.rank < (s + 1) * stageDevices));

  for (const { name, layout: dstLayout } of destinationParams(input, stage)) {
    const srcStage = sourceStageOf(source, name, stage);
    let srcLayout: ParamLayout;
    let holdersFiles: SourceFile[];
    let firstRank: number;
    if (srcStage !== undefined) {
      srcLayout = source.params.get(name)!.layoutByStage.get(srcStage)!;
      firstRank = srcStage * stageDevices;
      holdersFiles = filesOfStage(srcStage);
    } else {
      // Not in the source strategy: every file that has it holds all of it.
      holdersFiles = ordered.filter((f) => f.tensors.has(name));
      if (holdersFiles.length === 0) {
        throw new ShardserveError('MissingParam', `parameter '${name}' of the destination strategy is in neither the source strategy (${source.uri}) nor any checkpoint file`, { param: name });
      }
      const inStage = holdersFiles.some((f) => Math.floor(f.rank / stageDevices) === stage);
      const chosenStage = inStage ? stage : Math.floor(holdersFiles[0].rank / stageDevices);
      holdersFiles = holdersFiles.filter((f) => Math.floor(f.rank / stageDevices) === chosenStage);
      firstRank = chosenStage * stageDevices;
      srcLayout = replicatedLayout(stageDevices, holdersFiles[0].tensors.get(name)!.shape.length);
    }

    // Full shape and dtype, cross-checked across every file of the stage that has the tensor.
    let fullShape: number[] | undefined = srcLayout.tensorShape ?? dstLayout?.tensorShape;
    const shapeFrom = srcLayout.tensorShape ? source.uri : undefined;
    let dtype: DType | undefined;
    let shapeWitness = shapeFrom;
    let dtypeWitness = '';
    // The files of a stage hold equal slice shapes, and an equal shape at a rank inside the dev
    // matrix implies the same full shape (the rank matters only with param_split_shape): derived again
    // only when the shape changes.
    const devices = product(srcLayout.devMatrix);
    const byRank = srcLayout.paramSplitShape.length > 0;
    let last: { slice: readonly number[]; implied: number[] } | undefined;
    for (const f of holdersFiles) {
      const entry = f.tensors.get(name);
      if (!entry) continue;
      const ctx = { param: name, file: f.uri };
      const srcLocal = f.rank - firstRank;
      const implied = last && !byRank && srcLocal < devices && sameShape(entry.shape, last.slice) ? last.implied : fullShapeFromSlice(srcLayout, entry.shape, srcLocal, ctx);
      last = { slice: entry.shape, implied };
      if (!fullShape) {
        fullShape = implied;
        shapeWitness = f.uri;
      } else if (implied !== fullShape && !sameShape(implied, fullShape)) {
        throw new ShardserveError('ShapeMismatch', `${f.uri}: parameter '${name}' has slice shape ${shapeText(entry.shape)}, which with the strategy means full shape ${shapeText(implied)}, but ${shapeWitness ?? 'the destination strategy'} means ${shapeText(fullShape)}`, ctx);
      }
      if (!dtype) {
        dtype = entry.dtype;
        dtypeWitness = f.uri;
      } else if (entry.dtype !== dtype) {
        throw new ShardserveError('DTypeMismatch', `${f.uri}: parameter '${name}' is ${entry.dtype} but ${dtypeWitness} has ${dtype}`, ctx);
      }
    }
    if (!fullShape || !dtype) {
      const ranks = holdersFiles.length ? `rank_${firstRank}..rank_${firstRank + stageDevices - 1}` : `stage ${srcStage ?? stage}`;
      throw new ShardserveError('MissingParam', `parameter '${name}' of ${destination.kind === 'strategy' ? 'the destination strategy' : source.uri} is in no checkpoint file of ${ranks}`, { param: name });
    }
    const shape = fullShape;
    const elemBytes = DTYPE_BYTES[dtype];
    const shared = dstLayout && once(`box ${layoutKey(dstLayout)} ${shape}`, () => rankBox(dstLayout, shape, local, { param: name, file: destination.kind === 'strategy' ? destination.strategy.uri : undefined }));
    // Each tensor gets arrays of its own (its plan entry is handed out).
    const dstBox: Box = shared ? { offsets: [...shared.offsets], sizes: [...shared.sizes] } : { offsets: shape.map(() => 0), sizes: [...shape] };
    const copies: CopyOp[] = [];
    // A field-split source is planned in the view where it is an ordinary layout (same bytes).
    let viewLayout = srcLayout;
    let viewShape = shape;
    let viewDst = dstBox;
    if (srcLayout.field > 0) {
      if (dstBox.sizes.length === 0 || dstBox.sizes[0] !== shape[0]) {
        throw new ShardserveError('Unsupported', `parameter '${name}': a field-split (field=${srcLayout.field}) source can only go to destinations that keep dim 0 whole`, { param: name });
      }
      ({ layout: viewLayout, fullShape: viewShape } = fieldView(srcLayout, shape, { param: name, file: source.uri }));
      viewDst = { offsets: [0, 0, ...dstBox.offsets.slice(1)], sizes: [viewShape[0], viewShape[1], ...dstBox.sizes.slice(1)] };
    }
    const pieces = once(`pieces ${layoutKey(viewLayout)} ${viewShape}`, () => distinctPieces(viewLayout, viewShape, { param: name, file: source.uri }));
    for (const piece of pieces) {
      const overlap = intersectBoxes(piece.box, viewDst);
      if (!overlap || product(overlap.sizes) === 0) continue;
      const available = piece.holders.filter((h) => files.get(firstRank + h)?.tensors.has(name));
      if (available.length === 0) {
        const wanted = piece.holders.map((h) => `rank_${firstRank + h}`).join(', ');
        const missing = piece.holders.filter((h) => !files.has(firstRank + h));
        const why = missing.length === piece.holders.length ? 'missing' : 'without this parameter';
        throw new ShardserveError('MissingRank', `parameter '${name}': the piece at ${shapeText(piece.box.offsets)} of size ${shapeText(piece.box.sizes)} is only in ${wanted}, and those checkpoint files are ${why}`, { param: name });
      }
      const holder = available.includes(local) ? local : available[0];
      copies.push(copyForOverlap(firstRank + holder, overlap, piece.box, viewDst, elemBytes));
    }
    tensors.push({ name, dtype, shape: dstBox.sizes, fullShape: shape, box: dstBox, byteLength: product(dstBox.sizes) * elemBytes, copies });
  }

  const perFile = new Map<number, ByteRange[]>();
  for (const t of tensors) {
    for (const op of t.copies) {
      const entry = files.get(op.rank)!.tensors.get(t.name)!;
      const list = perFile.get(op.rank) ?? [];
      perFile.set(op.rank, list);
      const span = sourceSpan(op);
      // A copy whose runs tile a stretch of the source is that stretch; otherwise run by run.
      if (span === runCount(op) * op.runBytes) tensorRunToFile(entry, op.srcOffset, span, (fileOffset, _t, len) => list.push({ offset: fileOffset, length: len }));
      else forEachRun(op, (srcOffset, _dst, length) => tensorRunToFile(entry, srcOffset, length, (fileOffset, _t, len) => list.push({ offset: fileOffset, length: len })));
    }
  }
  const fileReads: FileReads[] = [...perFile.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([rank, ranges]) => {
      const merged = coalesceRanges(ranges);
      return { rank, uri: files.get(rank)!.uri, ranges: merged, bytes: merged.reduce((s, r) => s + r.length, 0) };
    });
  return {
    rank: destination.kind === 'single' ? 0 : input.rank,
    stage,
    tensors,
    files: fileReads,
    readBytes: fileReads.reduce((s, f) => s + f.bytes, 0),
    sliceBytes: tensors.reduce((s, t) => s + t.byteLength, 0),
    notes,
  };
}

/** Source stages a destination rank reads from (so only their files need indexing). */
export function sourceStagesFor(source: Strategy, destination: Destination, rank: number): number[] {
  if (destination.kind === 'single') return Array.from({ length: source.stageCount }, (_, i) => i);
  const { stage } = destinationStage(destination, rank);
  const stages = new Set<number>();
  for (const p of destination.strategy.params.values()) {
    if (!p.layoutByStage.has(stage)) continue;
    const s = sourceStageOf(source, p.name, stage);
    if (s !== undefined) stages.add(s);
  }
  if (stages.size === 0) stages.add(Math.min(stage, source.stageCount - 1));
  return [...stages].sort((a, b) => a - b);
}

/** The plan as JSON for `shardserve plan --json`: totals, per-file ranges, per-tensor sources. */
export function planToJson(plan: ReadPlan): unknown {
  return {
    rank: plan.rank,
    stage: plan.stage,
    readBytes: plan.readBytes,
    sliceBytes: plan.sliceBytes,
    files: plan.files.map((f) => ({ rank: f.rank, uri: f.uri, bytes: f.bytes, ranges: f.ranges.map((r) => [r.offset, r.length]) })),
    tensors: plan.tensors.map((t) => ({
      name: t.name,
      dtype: t.dtype,
      shape: t.shape,
      fullShape: t.fullShape,
      offsets: t.box.offsets,
      bytes: t.byteLength,
      sourceRanks: [...new Set(t.copies.map((c) => c.rank))],
    })),
    notes: plan.notes,
  };
}
