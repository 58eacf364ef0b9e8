import { ShardserveError } from '../errors.js';
import { WIRE_VARINT, WireWriter } from '../ckpt/wire.js';
import type { ParamLayout, Strategy } from './types.js';

export interface StrategyWriteOptions {
  /**
   * Write only this pipeline stage (a per-stage file, MindSpore's default output). Without it, a
   * single-stage strategy is written plainly and a multi-stage one as a merged file with
   * "<stage>-<param>" keys (what `merge_pipeline_strategys` produces).
   */
  stage?: number;
}

/** Node name of the one strategy item we write to record a per-stage file's stage (§2.7). */
export const STAGE_MARKER_NODE = 'shardserve/stage';

interface Selected {
  /** Stage recorded in parallel_strategy_item, or undefined when no item is needed. */
  markerStage?: number;
  layouts: Array<[string, ParamLayout]>;
}

function select(strategy: Strategy, opts: StrategyWriteOptions): Selected {
  const names = [...strategy.params.keys()];
  if (opts.stage !== undefined) {
    if (!(Number.isInteger(opts.stage) && opts.stage >= 0 && opts.stage < strategy.stageCount)) {
      throw new ShardserveError('BadStage', `${strategy.uri}: stage ${opts.stage} is not in 0..${strategy.stageCount - 1}`, { file: strategy.uri });
    }
    const layouts: Array<[string, ParamLayout]> = [];
    for (const n of names) {
      const l = strategy.params.get(n)!.layoutByStage.get(opts.stage);
      if (l) layouts.push([n, l]);
    }
    // MindSpore's merge_pipeline_strategys needs a strategy item to learn a per-stage file's stage.
    return { markerStage: opts.stage, layouts };
  }
  if (strategy.stageCount === 1) {
    return { layouts: names.map((n) => [n, strategy.params.get(n)!.layoutByStage.get(0)!] as [string, ParamLayout]).filter(([, l]) => l) };
  }
  const layouts: Array<[string, ParamLayout]> = [];
  for (let s = 0; s < strategy.stageCount; s++) {
    for (const n of names) {
      const l = strategy.params.get(n)!.layoutByStage.get(s);
      if (l) layouts.push([`${s}-${n}`, l]);
    }
  }
  return { layouts };
}

/** A tensor map in MindSpore's file form: flat, or one list per dim when any dim is nested (§2.6). */
function tensorMapEntries(map: Array<number | number[]>): number[][] {
  if (!map.some(Array.isArray)) return [map as number[]];
  const entries = map.map((d) => (Array.isArray(d) ? d : [d]));
  if (entries.length === 1) entries.push([]); // MindSpore appends an empty map for 1-D nested tensors
  return entries;
}

/**
 * MindSpore's JSON strategy format (§2.2), readable by MindSpore and by parseStrategyFiles.
 * MindSpore's Python JSON reader (`_build_json_strategy`) only takes flat tensor maps: write a
 * strategy with nested maps as protobuf if MindSpore must read it.
 */
export function strategyToJson(strategy: Strategy, opts: StrategyWriteOptions = {}): string {
  const sel = select(strategy, opts);
  const items: Record<string, unknown> = {};
  if (sel.markerStage !== undefined) items[STAGE_MARKER_NODE] = { stage: sel.markerStage, parallel_strategy: [] };
  const layouts: Record<string, unknown> = {};
  for (const [name, l] of sel.layouts) {
    const entries = tensorMapEntries(l.tensorMap);
    layouts[name] = {
      dev_matrix: l.devMatrix,
      tensor_map: entries.length === 1 ? entries[0] : entries,
      ...(l.tensorShape ? { tensor_shape: l.tensorShape } : {}),
      field: l.field,
      opt_weight_shard_step: l.optShardStep,
      opt_weight_shard_size: l.optShardSize,
      ...(l.paramSplitShape.length ? { param_split_shape: l.paramSplitShape, indices_offset: l.indicesOffset } : {}),
    };
  }
  return JSON.stringify({ current_stage: 1, parallel_strategy_item: items, parallel_layout_item: layouts }, null, 2) + '\n';
}

function repeatedMessage(dims: number[]): Uint8Array {
  const w = new WireWriter();
  for (const d of dims) w.key(1, WIRE_VARINT).varint(d);
  return w.finish();
}

/** A protobuf `mindspore.straspb.ParallelStrategyMap` (§2.1), as MindSpore writes it. */
export function strategyToProtobuf(strategy: Strategy, opts: StrategyWriteOptions = {}): Uint8Array {
  const sel = select(strategy, opts);
  const map = new WireWriter().key(1, WIRE_VARINT).varint(1);
  if (sel.markerStage !== undefined) {
    const strategys = new WireWriter().key(1, WIRE_VARINT).varint(sel.markerStage).finish();
    map.bytes(2, new WireWriter().string(1, STAGE_MARKER_NODE).bytes(2, strategys).finish());
  }
  for (const [name, l] of sel.layouts) {
    const lw = new WireWriter().bytes(1, repeatedMessage(l.devMatrix));
    for (const entry of tensorMapEntries(l.tensorMap)) lw.bytes(2, repeatedMessage(entry));
    lw.bytes(3, repeatedMessage(l.paramSplitShape)).bytes(4, repeatedMessage(l.indicesOffset));
    lw.key(5, WIRE_VARINT).varint(l.field).key(6, WIRE_VARINT).varint(l.optShardStep).key(7, WIRE_VARINT).varint(l.optShardSize);
    map.bytes(3, new WireWriter().string(1, name).bytes(2, lw.finish()).finish());
  }
  return map.finish();
}
