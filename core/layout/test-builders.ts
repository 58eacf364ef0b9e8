import type { ParamLayout, Strategy, StrategyParam } from '../strategy/types.js';
import { rankBox } from './box.js';

/** A layout with MindSpore's defaults for everything not given (for tests). */
export function layoutOf(devMatrix: number[], tensorMap: Array<number | number[]>, extra: Partial<ParamLayout> = {}): ParamLayout {
  return { devMatrix, tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0, ...extra };
}

/** A strategy from `{name: layout}` per stage (for tests). */
export function strategyOf(stages: Array<Record<string, ParamLayout>>, uri = 'test-strategy.json'): Strategy {
  const params = new Map<string, StrategyParam>();
  let stageDevices = 0;
  stages.forEach((layouts, stage) => {
    for (const [name, layout] of Object.entries(layouts)) {
      stageDevices = layout.devMatrix.reduce((a, b) => a * b, 1);
      const p: StrategyParam = params.get(name) ?? { name, stages: [], layoutByStage: new Map() };
      p.stages.push(stage);
      p.layoutByStage.set(stage, layout);
      params.set(name, p);
    }
  });
  return { uri, stageCount: stages.length, stageDevices, params };
}

/** A small deterministic PRNG (mulberry32) so property tests replay by seed. */
export function rngOf(seed: number): { int(lo: number, hi: number): number; pick<T>(xs: readonly T[]): T; chance(p: number): boolean } {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)),
    pick: (xs) => xs[Math.floor(next() * xs.length)],
    chance: (p) => next() < p,
  };
}

type Rng = ReturnType<typeof rngOf>;

function randomDevMatrix(rng: Rng, devices?: number): number[] {
  if (devices !== undefined) {
    // factor `devices` into 1..3 axes
    const axes: number[] = [];
    let left = devices;
    while (left > 1 && axes.length < 2) {
      const divisors = [...Array(left).keys()].map((i) => i + 1).filter((d) => left % d === 0 && d > 1);
      const d = rng.pick(divisors);
      axes.push(d);
      left /= d;
    }
    if (left > 1) axes.push(left);
    if (axes.length === 0) axes.push(1);
    if (rng.chance(0.2)) axes.splice(rng.int(0, axes.length), 0, 1);
    return axes;
  }
  return Array.from({ length: rng.int(1, 3) }, () => rng.pick([1, 2, 2, 3, 4]));
}

/**
 * A random source layout for a tensor of `dims` dims: random axes per dim (sometimes nested),
 * sometimes optimizer sharding over the replicated axes, sometimes a manual uneven split of dim 0.
 * Returns the layout and a full shape that fits it.
 */
export function randomSourceLayout(rng: Rng, devMatrix: number[], dims: number): { layout: ParamLayout; fullShape: number[] } {
  const n = devMatrix.length;
  const free = [...Array(n).keys()];
  const tensorMap: Array<number | number[]> = [];
  for (let i = 0; i < dims; i++) {
    if (free.length === 0 || rng.chance(0.4)) {
      tensorMap.push(-1);
      continue;
    }
    const take = () => free.splice(rng.int(0, free.length - 1), 1)[0];
    if (free.length >= 2 && rng.chance(0.2)) tensorMap.push([take(), take()]);
    else tensorMap.push(take());
  }
  const layout = layoutOf(devMatrix, tensorMap);
  const parts = tensorMap.map((m) => (Array.isArray(m) ? m : [m]).filter((x) => x >= 0).reduce((p, x) => p * devMatrix[n - 1 - x], 1));
  const fullShape = parts.map((s) => s * rng.int(1, 3));
  const referenced = new Set(tensorMap.flatMap((m) => (Array.isArray(m) ? m : [m])).filter((x) => x >= 0).map((x) => n - 1 - x));
  const repeated = devMatrix.map((_, i) => i).filter((i) => !referenced.has(i) && devMatrix[i] > 1);
  if (dims > 0 && repeated.length > 0 && rng.chance(0.35)) {
    // k = whole replicated axes from the right, then maybe a divisor of the next one.
    let k = 1;
    let j = repeated.length - 1;
    const whole = rng.int(0, repeated.length);
    for (let w = 0; w < whole; w++, j--) k *= devMatrix[repeated[j]];
    if (j >= 0 && (k === 1 || rng.chance(0.5))) {
      const d = devMatrix[repeated[j]];
      const divisors = [...Array(d).keys()].map((x) => x + 1).filter((x) => d % x === 0 && x > 1);
      k *= rng.pick(divisors);
    }
    if (k > 1) {
      const flat = tensorMap.every((m) => !Array.isArray(m));
      const step = flat && repeated.length === 1 ? devMatrix.slice(repeated[0] + 1).reduce((a, b) => a * b, 1) : rng.int(1, 4);
      const useAll = k === repeated.reduce((p, i) => p * devMatrix[i], 1) && rng.chance(0.5);
      layout.optShardStep = step;
      layout.optShardSize = useAll ? -1 : k;
      fullShape[0] *= k;
    }
  } else if (dims > 0 && parts[0] > 1 && parts.slice(1).every((p) => p === 1) && rng.chance(0.25)) {
    const lengths = Array.from({ length: parts[0] }, () => rng.int(1, 4));
    let at = 0;
    layout.paramSplitShape = lengths;
    layout.indicesOffset = lengths.map((l) => ((at += l), at - l));
    fullShape[0] = at;
  }
  return { layout, fullShape };
}

/** A random destination (inference) layout for a known full shape: every split divides its dim. */
export function randomDestinationLayout(rng: Rng, devMatrix: number[], fullShape: readonly number[]): ParamLayout {
  const n = devMatrix.length;
  const free = [...Array(n).keys()];
  const tensorMap: Array<number | number[]> = fullShape.map((size) => {
    const fits = free.filter((x) => size % devMatrix[n - 1 - x] === 0);
    if (fits.length === 0 || rng.chance(0.3)) return -1;
    const x = rng.pick(fits);
    free.splice(free.indexOf(x), 1);
    return x;
  });
  return layoutOf(devMatrix, tensorMap);
}

export { randomDevMatrix };

/** The C-order bytes of `box` cut out of a full tensor. */
export function extractBox(full: Uint8Array, fullShape: readonly number[], box: { offsets: number[]; sizes: number[] }, elemBytes: number): Uint8Array {
  const size = box.sizes.reduce((a, b) => a * b, 1) * elemBytes;
  const out = new Uint8Array(size);
  if (size === 0) return out;
  const n = fullShape.length;
  if (n === 0) {
    out.set(full.subarray(0, elemBytes));
    return out;
  }
  const strides = new Array<number>(n);
  let s = elemBytes;
  for (let i = n - 1; i >= 0; i--) {
    strides[i] = s;
    s *= fullShape[i];
  }
  const row = box.sizes[n - 1] * elemBytes;
  const idx = new Array<number>(n - 1).fill(0);
  let at = 0;
  for (;;) {
    let src = box.offsets[n - 1] * elemBytes;
    for (let i = 0; i < n - 1; i++) src += (box.offsets[i] + idx[i]) * strides[i];
    out.set(full.subarray(src, src + row), at);
    at += row;
    let d = n - 2;
    while (d >= 0 && ++idx[d] === box.sizes[d]) idx[d--] = 0;
    if (d < 0) break;
  }
  return out;
}

/** One tensor as bytes (for tests and fixture generators). */
export interface TensorData {
  name: string;
  dtype: import('../dtype.js').DType;
  shape: number[];
  data: Uint8Array;
}

/** A random sharded checkpoint: strategy, the ground-truth full tensors, and each rank's slices. */
export interface RandomCheckpoint {
  strategy: Strategy;
  full: Map<string, TensorData>;
  /** Global rank -> the tensors its file holds (sorted by name). */
  rankFiles: Map<number, TensorData[]>;
}

const DTYPES = ['F32', 'F16', 'BF16', 'I32', 'I8', 'F64', 'U8', 'I64'] as const;
const BYTES: Record<string, number> = { F32: 4, F16: 2, BF16: 2, I32: 4, I8: 1, F64: 8, U8: 1, I64: 8 };

function randomBytes(rng: Rng, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.int(0, 255);
  return out;
}

export function randomCheckpoint(seed: number, opts: { maxStages?: number } = {}): RandomCheckpoint {
  const rng = rngOf(seed);
  const stageCount = rng.int(1, opts.maxStages ?? 2);
  const stageDevices = rng.pick([1, 2, 3, 4, 4, 6, 8, 8]);
  const stages: Array<Record<string, ParamLayout>> = Array.from({ length: stageCount }, () => ({}));
  const full = new Map<string, TensorData>();
  const holdersOf = new Map<string, Map<number, Set<number>>>(); // name -> stage -> local ranks keeping it
  const paramCount = rng.int(stageCount, 5);
  const names: string[] = [];
  for (let p = 0; p < paramCount; p++) {
    const name = `${rng.pick(['backbone', 'head', 'layer', 'embedding', 'blocks.3'])}.${rng.pick(['weight', 'bias', 'gamma', 'w'])}_${p}${rng.chance(0.2) ? '-x' : ''}`;
    names.push(name);
    const dims = rng.int(0, 3);
    // every pipeline stage holds parameters (the first ones go one per stage)
    const stage = p < stageCount ? p : rng.int(0, stageCount - 1);
    const { layout, fullShape } = randomSourceLayout(rng, randomDevMatrix(rng, stageDevices), dims);
    stages[stage][name] = layout;
    const dtype = rng.pick(DTYPES);
    full.set(name, { name, dtype, shape: fullShape, data: randomBytes(rng, fullShape.reduce((a, b) => a * b, 1) * BYTES[dtype]) });
    if (stageCount > 1 && rng.chance(0.25)) {
      const other = stage === 0 ? stageCount - 1 : 0;
      stages[other][name] = randomDestinationLayout(rng, randomDevMatrix(rng, stageDevices), fullShape);
    }
  }
  const strategy = strategyOf(stages);
  strategy.stageDevices = stageDevices;
  const rankFiles = new Map<number, TensorData[]>();
  for (let s = 0; s < stageCount; s++) {
    for (let l = 0; l < stageDevices; l++) rankFiles.set(s * stageDevices + l, []);
    for (const [name, layout] of Object.entries(stages[s])) {
      const t = full.get(name)!;
      const eb = BYTES[t.dtype];
      // Sometimes save each distinct piece on one replica only (remove_redundancy).
      const keep = new Map<string, number>();
      const sparse = rng.chance(0.2);
      for (let l = 0; l < stageDevices; l++) {
        const box = rankBox(layout, t.shape, l);
        const key = `${box.offsets}|${box.sizes}`;
        if (sparse) {
          if (!keep.has(key)) keep.set(key, rng.chance(0.5) ? l : -1);
          const chosen = keep.get(key)!;
          if (chosen !== -1 && chosen !== l) continue;
          if (chosen === -1) keep.set(key, l);
        }
        rankFiles.get(s * stageDevices + l)!.push({ name, dtype: t.dtype, shape: box.sizes, data: extractBox(t.data, t.shape, box, eb) });
      }
      holdersOf.set(name, new Map());
    }
    for (let l = 0; l < stageDevices; l++) {
      rankFiles.get(s * stageDevices + l)!.push({ name: 'global_step', dtype: 'I32', shape: [], data: new Uint8Array([7, 0, 0, 0]) });
    }
  }
  full.set('global_step', { name: 'global_step', dtype: 'I32', shape: [], data: new Uint8Array([7, 0, 0, 0]) });
  for (const files of rankFiles.values()) files.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  void names;
  return { strategy, full, rankFiles };
}

/** A random destination strategy for a random checkpoint: same stages or one, any devices per stage. */
export function randomDestination(seed: number, ckpt: RandomCheckpoint): Strategy {
  const rng = rngOf(seed ^ 0x5bd1e995);
  const stageCount = ckpt.strategy.stageCount > 1 && rng.chance(0.5) ? 1 : ckpt.strategy.stageCount;
  const devices = rng.int(1, 5);
  const stages: Array<Record<string, ParamLayout>> = Array.from({ length: stageCount }, () => ({}));
  for (const p of ckpt.strategy.params.values()) {
    const shape = ckpt.full.get(p.name)!.shape;
    for (const s of stageCount === 1 ? [0] : p.stages) stages[s][p.name] = randomDestinationLayout(rng, randomDevMatrix(rng, devices), shape);
  }
  const strategy = strategyOf(stages, 'random-destination.json');
  strategy.stageDevices = devices;
  return strategy;
}

/**
 * An in-memory checkpoint file for planner/executor unit tests: tensors laid out one after another
 * with a few header bytes between, each split into two pieces (like .ckpt 512 MiB records) when
 * `split` is set.
 */
export function memoryIndex(uri: string, tensors: TensorData[], split = false): import('../checkpoint/types.js').CheckpointIndex {
  const chunks: Uint8Array[] = [];
  let at = 0;
  const entries = new Map<string, import('../checkpoint/types.js').TensorEntry>();
  for (const t of tensors) {
    const pieces: { offset: number; length: number }[] = [];
    const cut = split && t.data.length > 1 ? Math.floor(t.data.length / 2) : t.data.length;
    for (const [lo, hi] of [[0, cut], [cut, t.data.length]]) {
      if (hi <= lo && pieces.length > 0) continue;
      chunks.push(new Uint8Array([0xa, 0xb, 0xc]));
      at += 3;
      pieces.push({ offset: at, length: hi - lo });
      chunks.push(t.data.subarray(lo, hi));
      at += hi - lo;
    }
    entries.set(t.name, { name: t.name, dtype: t.dtype, shape: t.shape, pieces, byteLength: t.data.length });
  }
  const bytes = new Uint8Array(at);
  let o = 0;
  for (const c of chunks) {
    bytes.set(c, o);
    o += c.length;
  }
  let bytesRead = 0;
  const source = {
    uri,
    size: bytes.length,
    get bytesRead() { return bytesRead; },
    async read(offset: number, length: number) {
      if (offset < 0 || offset + length > bytes.length) throw new Error(`read past end of ${uri}`);
      bytesRead += length;
      return bytes.slice(offset, offset + length);
    },
    async close() {},
  };
  return { format: 'mindspore-ckpt', source, tensors: entries, strings: new Map(), notes: [], crc: 'absent', encryption: 'none', metadata: {} };
}
