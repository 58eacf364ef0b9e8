import { ShardserveError } from '../errors.js';
import {
  WIRE_LEN, WIRE_VARINT, WireError, asInt32, asInt64, asUint32, decodeUtf8, readKey, readLenBounds, readVarint, skipField,
} from '../ckpt/wire.js';
import type { ParamLayout, Strategy, StrategyParam } from './types.js';

/** One strategy file, decoded but not yet merged with others. */
export interface StrategyFile {
  name: string;
  /** Pipeline stage of the file: its first parallel_strategy_item's stage; undefined without items. */
  stage: number | undefined;
  /** Layouts under the names the file uses (merged files: "<stage>-<param>"). */
  layouts: Map<string, ParamLayout>;
}

const MAX_DIMS = 64;

/**
 * Parse one or more MindSpore strategy files into one Strategy (reference §2): protobuf
 * `ParallelStrategyMap` or JSON (by a `.json` name); one file, per-rank or per-stage files (identical
 * stages are deduplicated), or a merged file whose keys are "<stage>-<param>". Tied parameters may
 * appear in several stages. The stage set must be exactly 0..P-1 and every layout of a stage must
 * arrange the same number of devices.
 */
export function parseStrategyFiles(files: { name: string; bytes: Uint8Array }[], uri: string): Strategy {
  if (files.length === 0) throw new ShardserveError('NoStrategy', `${uri}: no strategy files`, { file: uri });
  const params = new Map<string, StrategyParam & { fileOf: Map<number, string> }>();
  for (const f of files) {
    const parsed = parseStrategyFile(f.name, f.bytes);
    const merged = parsed.layouts.size > 0 && [...parsed.layouts.keys()].every((k) => splitMergedKey(k) !== undefined);
    for (const [key, layout] of parsed.layouts) {
      const [stage, name] = merged ? splitMergedKey(key)! : [parsed.stage ?? 0, key];
      let p = params.get(name);
      if (!p) params.set(name, (p = { name, stages: [], layoutByStage: new Map(), fileOf: new Map() }));
      const prev = p.layoutByStage.get(stage);
      if (prev) {
        if (!sameLayout(prev, layout)) {
          throw new ShardserveError('ConflictingLayouts',
            `${f.name}: parameter '${name}' in stage ${stage} has layout ${describe(layout)}, but ${p.fileOf.get(stage)} gives ${describe(prev)}`,
            { file: f.name, param: name });
        }
        continue;
      }
      p.layoutByStage.set(stage, layout);
      p.fileOf.set(stage, f.name);
      p.stages.push(stage);
    }
  }

  const devicesOfStage = new Map<number, { devices: number; param: string; file: string }>();
  for (const p of params.values()) {
    p.stages.sort((a, b) => a - b);
    for (const [stage, layout] of p.layoutByStage) {
      const devices = layout.devMatrix.reduce((a, b) => a * b, 1);
      const seen = devicesOfStage.get(stage);
      if (!seen) devicesOfStage.set(stage, { devices, param: p.name, file: p.fileOf.get(stage)! });
      else if (seen.devices !== devices) {
        throw new ShardserveError('InconsistentDevices',
          `${p.fileOf.get(stage)}: parameter '${p.name}' in stage ${stage} arranges ${devices} devices (dev_matrix [${layout.devMatrix}]), but '${seen.param}' arranges ${seen.devices}`,
          { file: p.fileOf.get(stage), param: p.name });
      }
    }
  }
  const stages = [...devicesOfStage.keys()].sort((a, b) => a - b);
  if (stages.length === 0) throw new ShardserveError('EmptyStrategy', `${uri}: strategy has no parameter layouts`, { file: uri });
  const stageCount = stages[stages.length - 1] + 1;
  if (stages.length !== stageCount) {
    throw new ShardserveError('MissingStages', `${uri}: strategy does not contain all pipeline stages: found stages [${stages}], expected 0..${stageCount - 1}`, { file: uri });
  }
  const devices = new Set([...devicesOfStage.values()].map((d) => d.devices));
  if (devices.size > 1) {
    throw new ShardserveError('InconsistentDevices', `${uri}: pipeline stages arrange different device counts (${stages.map((s) => `stage ${s}: ${devicesOfStage.get(s)!.devices}`).join(', ')})`, { file: uri });
  }
  const out = new Map<string, StrategyParam>();
  for (const { fileOf: _f, ...p } of params.values()) out.set(p.name, p);
  return { uri, stageCount, stageDevices: [...devices][0], params: out };
}

/** "<stage>-<param>" → [stage, param] when the prefix is a decimal integer (split('-', 1)). */
export function splitMergedKey(key: string): [number, string] | undefined {
  const m = /^(\d+)-([\s\S]+)$/.exec(key);
  if (!m || m[1].length > 6) return undefined;
  return [Number(m[1]), m[2]];
}

/** Decode one strategy file (protobuf, or JSON when the name ends in `.json`). */
export function parseStrategyFile(name: string, bytes: Uint8Array): StrategyFile {
  if (bytes.length === 0) throw new ShardserveError('EmptyStrategy', `${name}: strategy file is empty`, { file: name });
  return name.toLowerCase().endsWith('.json') ? parseJsonStrategy(name, bytes) : parseProtobufStrategy(name, bytes);
}

// ---------------------------------------------------------------- protobuf

function parseProtobufStrategy(name: string, bytes: Uint8Array): StrategyFile {
  try {
    return decodeStrategyMap(name, bytes);
  } catch (e) {
    if (e instanceof WireError) {
      throw new ShardserveError('CorruptStrategy', `${name}: corrupt protobuf strategy at offset ${e.offset}: ${e.message}`, { file: name, cause: e });
    }
    throw e;
  }
}

type Bounds = { start: number; end: number };

/** Iterate the fields of a message in [start, end): calls `on` with the key and the value position. */
function fields(buf: Uint8Array, b: Bounds, on: (field: number, wire: number, pos: number) => number | undefined): void {
  for (let p = b.start; p < b.end; ) {
    const k = readKey(buf, p, b.end);
    p = on(k.field, k.wire, k.end) ?? skipField(buf, k.end, k.wire, b.end);
  }
}

function expectWire(field: number, wire: number, want: number, msg: string, pos: number): void {
  if (wire !== want) throw new WireError(`${msg} field ${field} has wire type ${wire}, expected ${want}`, pos);
}

/** Field 1 of a message holding a repeated scalar (packed or unpacked). */
function repeatedVarints(buf: Uint8Array, b: Bounds, msg: string): bigint[] {
  const out: bigint[] = [];
  const push = (v: bigint, pos: number) => {
    if (out.length >= MAX_DIMS) throw new WireError(`${msg} has more than ${MAX_DIMS} entries`, pos);
    out.push(v);
  };
  fields(buf, b, (field, wire, pos) => {
    if (field !== 1) return undefined;
    if (wire === WIRE_VARINT) {
      const v = readVarint(buf, pos, b.end);
      push(v.value, pos);
      return v.end;
    }
    expectWire(field, wire, WIRE_LEN, msg, pos);
    const packed = readLenBounds(buf, pos, b.end);
    for (let q = packed.start; q < packed.end; ) {
      const v = readVarint(buf, q, packed.end);
      push(v.value, q);
      q = v.end;
    }
    return packed.end;
  });
  return out;
}

function varintField(buf: Uint8Array, wire: number, pos: number, end: number, what: string): { value: bigint; end: number } {
  expectWire(0, wire, WIRE_VARINT, what, pos);
  return readVarint(buf, pos, end);
}

function decodeStrategyMap(fileName: string, buf: Uint8Array): StrategyFile {
  let stage: number | undefined;
  const layouts = new Map<string, ParamLayout>();
  fields(buf, { start: 0, end: buf.length }, (field, wire, pos) => {
    if (field === 1) return varintField(buf, wire, pos, buf.length, 'current_stage').end;
    if (field !== 2 && field !== 3) return undefined;
    expectWire(field, wire, WIRE_LEN, 'ParallelStrategyMap', pos);
    const item = readLenBounds(buf, pos, buf.length);
    if (field === 2) {
      const s = decodeStrategyItemStage(buf, item);
      if (stage === undefined) stage = s;
    } else {
      const { param, layout } = decodeLayoutItem(buf, item);
      if (layouts.has(param)) {
        throw new ShardserveError('DuplicateParameter', `${fileName}: parameter '${param}' has two parallel_layout_items`, { file: fileName, param });
      }
      layouts.set(param, checkLayout(fileName, param, layout));
    }
    return item.end;
  });
  return { name: fileName, stage, layouts };
}

function decodeStrategyItemStage(buf: Uint8Array, item: Bounds): number {
  let stage = 0;
  fields(buf, item, (field, wire, pos) => {
    if (field !== 2) return undefined;
    expectWire(field, wire, WIRE_LEN, 'ParallelStrategyItem', pos);
    const strategys = readLenBounds(buf, pos, item.end);
    fields(buf, strategys, (f, w, p) => {
      if (f !== 1) return undefined;
      const v = varintField(buf, w, p, strategys.end, 'ParallelStrategys.stage');
      stage = asUint32(v.value);
      return v.end;
    });
    return strategys.end;
  });
  return stage;
}

function decodeLayoutItem(buf: Uint8Array, item: Bounds): { param: string; layout: ParamLayout } {
  let param: string | undefined;
  let layout: ParamLayout | undefined;
  fields(buf, item, (field, wire, pos) => {
    if (field !== 1 && field !== 2) return undefined;
    expectWire(field, wire, WIRE_LEN, 'ParallelLayoutItem', pos);
    const b = readLenBounds(buf, pos, item.end);
    if (field === 1) param = decodeUtf8(buf.subarray(b.start, b.end), b.start);
    else layout = decodeLayouts(buf, b);
    return b.end;
  });
  if (param === undefined) throw new WireError('parallel_layout_item has no param_name', item.start);
  if (!layout) throw new WireError(`parallel_layout_item '${param}' has no parallel_layouts`, item.start);
  return { param, layout };
}

function decodeLayouts(buf: Uint8Array, b: Bounds): ParamLayout {
  const devMatrices: number[][] = [];
  const tensorMaps: number[][] = [];
  const splitShape: number[] = [];
  const indicesOffset: number[] = [];
  const ints = { 5: 0, 6: 0, 7: 0 } as Record<number, number>;
  fields(buf, b, (field, wire, pos) => {
    if (field >= 1 && field <= 4) {
      expectWire(field, wire, WIRE_LEN, 'ParallelLayouts', pos);
      const sub = readLenBounds(buf, pos, b.end);
      const values = repeatedVarints(buf, sub, ['', 'dev_matrix', 'tensor_map', 'param_split_shape', 'indices_offset'][field]);
      if (field === 1) devMatrices.push(values.map(asUint32));
      else if (field === 2) tensorMaps.push(values.map(asInt32));
      else (field === 3 ? splitShape : indicesOffset).push(...values.map((v) => asInt64(v, sub.start)));
      return sub.end;
    }
    if (field >= 5 && field <= 7) {
      const v = varintField(buf, wire, pos, b.end, 'ParallelLayouts');
      ints[field] = asInt32(v.value);
      return v.end;
    }
    return undefined;
  });
  if (devMatrices.length === 0) throw new WireError('parallel_layouts has no dev_matrix', b.start);
  return {
    devMatrix: devMatrices[0],
    tensorMap: normalizeTensorMaps(tensorMaps),
    paramSplitShape: splitShape,
    indicesOffset,
    field: ints[5],
    optShardStep: ints[6],
    optShardSize: ints[7],
  };
}

/**
 * One TensorMap entry = a flat map (one device axis or -1 per dim). More than one = nested (§2.6):
 * one entry per tensor dim listing its axes; empty entries (written for 1-D tensors) are dropped.
 */
export function normalizeTensorMaps(maps: number[][]): Array<number | number[]> {
  if (maps.length === 0) return [];
  if (maps.length === 1) return maps[0];
  return maps.filter((m) => m.length > 0).map((m) => (m.length === 1 ? m[0] : m));
}

// ---------------------------------------------------------------- JSON

function parseJsonStrategy(fileName: string, bytes: Uint8Array): StrategyFile {
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new ShardserveError('CorruptStrategy', `${fileName}: not valid JSON (${(e as Error).message})`, { file: fileName, cause: e });
  }
  const bad = (what: string, param?: string) =>
    new ShardserveError('CorruptStrategy', `${fileName}: ${param === undefined ? '' : `parameter '${param}': `}${what}`, { file: fileName, param });
  if (!isObject(json)) throw bad('expected a JSON object');
  let stage: number | undefined;
  const items = json.parallel_strategy_item;
  if (items !== undefined) {
    if (!isObject(items)) throw bad('parallel_strategy_item is not an object');
    const first = Object.values(items)[0];
    if (first !== undefined) {
      if (!isObject(first) || !isCount(first.stage)) throw bad('the first parallel_strategy_item has no integer "stage"');
      stage = first.stage;
    }
  }
  const items2 = json.parallel_layout_item;
  if (!isObject(items2)) throw bad('parallel_layout_item is missing or not an object');
  const layouts = new Map<string, ParamLayout>();
  for (const [param, l] of Object.entries(items2)) {
    if (!isObject(l)) throw bad('layout is not an object', param);
    const ints = (key: string, required: boolean): number[] => {
      const v = l[key];
      if (v === undefined && !required) return [];
      if (!Array.isArray(v) || !v.every(Number.isSafeInteger)) throw bad(`"${key}" is not a list of integers`, param);
      return v as number[];
    };
    const num = (key: string): number => {
      const v = l[key] ?? 0;
      if (!Number.isSafeInteger(v)) throw bad(`"${key}" is not an integer`, param);
      return v as number;
    };
    const tm = l.tensor_map;
    if (!Array.isArray(tm) || !tm.every((d) => Number.isSafeInteger(d) || (Array.isArray(d) && d.every(Number.isSafeInteger)))) {
      throw bad('"tensor_map" is not a list of integers (or of lists of integers)', param);
    }
    const tensorMap = tm.every((d) => Array.isArray(d))
      ? normalizeTensorMaps(tm as number[][])
      : (tm as Array<number | number[]>).filter((d) => !(Array.isArray(d) && d.length === 0)).map((d) => (Array.isArray(d) && d.length === 1 ? d[0] : d));
    const layout: ParamLayout = {
      devMatrix: ints('dev_matrix', true),
      tensorMap,
      paramSplitShape: ints('param_split_shape', false),
      indicesOffset: ints('indices_offset', false),
      field: num('field'),
      optShardStep: num('opt_weight_shard_step'),
      optShardSize: num('opt_weight_shard_size'),
    };
    if (l.tensor_shape !== undefined) layout.tensorShape = ints('tensor_shape', false);
    layouts.set(param, checkLayout(fileName, param, layout));
  }
  return { name: fileName, stage, layouts };
}

// ---------------------------------------------------------------- checks

function checkLayout(file: string, param: string, l: ParamLayout): ParamLayout {
  const bad = (what: string) => new ShardserveError('BadLayout', `${file}: parameter '${param}': ${what}`, { file, param });
  if (l.devMatrix.length === 0 || l.devMatrix.length > MAX_DIMS || !l.devMatrix.every((d) => Number.isSafeInteger(d) && d >= 1)) {
    throw bad(`dev_matrix [${l.devMatrix}] must be a non-empty list of positive integers`);
  }
  const devices = l.devMatrix.reduce((a, b) => a * b, 1);
  if (!Number.isSafeInteger(devices)) throw bad(`dev_matrix [${l.devMatrix}] arranges too many devices`);
  const used = new Set<number>();
  for (const entry of l.tensorMap) {
    for (const axis of Array.isArray(entry) ? entry : [entry]) {
      if (axis === -1) continue;
      if (!(Number.isInteger(axis) && axis >= 0 && axis < l.devMatrix.length)) {
        throw bad(`tensor_map ${JSON.stringify(l.tensorMap)} refers to device axis ${axis}, but dev_matrix [${l.devMatrix}] has ${l.devMatrix.length} axes`);
      }
      if (used.has(axis)) throw bad(`tensor_map ${JSON.stringify(l.tensorMap)} uses device axis ${axis} twice`);
      used.add(axis);
    }
  }
  if (l.paramSplitShape.length !== l.indicesOffset.length) {
    throw bad(`param_split_shape has ${l.paramSplitShape.length} entries but indices_offset has ${l.indicesOffset.length}`);
  }
  if (l.field < 0) throw bad(`field ${l.field} is negative`);
  if (l.optShardStep < 0) throw bad(`opt_weight_shard_step ${l.optShardStep} is negative`);
  if (l.optShardSize < -1) throw bad(`opt_weight_shard_size ${l.optShardSize} is below -1`);
  if (l.tensorShape && !l.tensorShape.every((d) => d >= 0)) throw bad(`tensor_shape [${l.tensorShape}] has a negative dim`);
  return l;
}

function sameLayout(a: ParamLayout, b: ParamLayout): boolean {
  const strip = (l: ParamLayout) => JSON.stringify([l.devMatrix, l.tensorMap, l.paramSplitShape, l.indicesOffset, l.field, l.optShardStep, l.optShardSize]);
  if (strip(a) !== strip(b)) return false;
  return !a.tensorShape || !b.tensorShape || JSON.stringify(a.tensorShape) === JSON.stringify(b.tensorShape);
}

function describe(l: ParamLayout): string {
  return `dev_matrix [${l.devMatrix}] tensor_map ${JSON.stringify(l.tensorMap)}` +
    (l.optShardSize ? ` opt_shard ${l.optShardSize}/${l.optShardStep}` : '');
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}
