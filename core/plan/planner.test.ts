import { describe, expect, it } from 'vitest';
import type { CheckpointIndex } from '../checkpoint/types.js';
import { DTYPE_BYTES } from '../dtype.js';
import { extractBox, layoutOf, memoryIndex, randomCheckpoint, randomDestination, strategyOf, type TensorData } from '../layout/test-builders.js';
import { executePlan } from '../reshard/execute.js';
import type { Strategy } from '../strategy/types.js';
import { type Destination, planRank, type SourceFile, sourceStagesFor } from './planner.js';

function filesOf(indexes: Map<number, CheckpointIndex>): Map<number, SourceFile> {
  return new Map([...indexes].map(([rank, index]) => [rank, { rank, uri: index.source.uri, tensors: index.tensors }]));
}

function ramp(n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => i & 0xff);
}

/** Slices of a full tensor for each local rank, as the training job saved them. */
function shardedFiles(strategy: Strategy, full: TensorData[], split = false, extra: (rank: number) => TensorData[] = () => []): Map<number, CheckpointIndex> {
  const out = new Map<number, CheckpointIndex>();
  for (let stage = 0; stage < strategy.stageCount; stage++) {
    for (let local = 0; local < strategy.stageDevices; local++) {
      const rank = stage * strategy.stageDevices + local;
      const tensors: TensorData[] = [];
      for (const t of full) {
        const layout = strategy.params.get(t.name)?.layoutByStage.get(stage);
        if (!layout) continue;
        const box = planRankBox(layout, t.shape, local);
        tensors.push({ name: t.name, dtype: t.dtype, shape: box.sizes, data: extractBox(t.data, t.shape, box, DTYPE_BYTES[t.dtype]) });
      }
      out.set(rank, memoryIndex(`ckpt/rank_${rank}/net.ckpt`, [...tensors, ...extra(rank)], split));
    }
  }
  return out;
}

import { rankBox as planRankBox } from '../layout/box.js';

async function run(strategy: Strategy, indexes: Map<number, CheckpointIndex>, destination: Destination, rank: number) {
  const plan = planRank({ source: strategy, files: filesOf(indexes), destination, rank });
  const out = new Map<string, Uint8Array>();
  const stats = await executePlan(plan, indexes, (t, data) => void out.set(t.name, data), { batchBytes: 64 });
  return { plan, out, stats };
}

describe('planning one destination rank', () => {
  const tp8 = strategyOf([{ w: layoutOf([8], [0, -1]), v: layoutOf([8], [-1, 0]) }]);
  const w = { name: 'w', dtype: 'F32' as const, shape: [64, 4], data: ramp(64 * 16) };
  const v = { name: 'v', dtype: 'F16' as const, shape: [4, 64], data: ramp(4 * 128) };
  const tp4 = strategyOf([{ w: layoutOf([4], [0, -1]), v: layoutOf([4], [-1, 0]) }]);

  it('TP 8 -> TP 4 reads exactly the slice, from two files, in one range each per tensor', async () => {
    const indexes = shardedFiles(tp8, [w, v]);
    const { plan, out } = await run(tp8, indexes, { kind: 'strategy', strategy: tp4 }, 1);
    expect(plan.files.map((f) => f.rank)).toEqual([2, 3]);
    expect(plan.readBytes).toBe(plan.sliceBytes);
    expect(plan.sliceBytes).toBe((16 * 4 * 4) + (4 * 16 * 2));
    expect(out.get('w')).toEqual(extractBox(w.data, w.shape, { offsets: [16, 0], sizes: [16, 4] }, 4));
    expect(out.get('v')).toEqual(extractBox(v.data, v.shape, { offsets: [0, 16], sizes: [4, 16] }, 2));
    // v's columns 16..32 sit in ranks 2 and 3 as whole [4,8] slices: one read per file for each tensor.
    expect(plan.tensors.find((t) => t.name === 'v')!.copies.map((c) => c.counts)).toEqual([[4], [4]]);
  });

  it('plans only the parameters asked for: strategy ones, and values in no strategy (optimizer states, counters) are left out unless named', async () => {
    // What a training checkpoint adds: w's moment in every file (in no strategy) and a step counter.
    const indexes = shardedFiles(tp8, [w, v], false, (rank) => [
      { name: 'moment1.w', dtype: 'F32', shape: [8, 4], data: ramp(8 * 16).map((x) => x ^ rank) },
      { name: 'global_step', dtype: 'I32', shape: [1], data: ramp(4) },
    ]);
    const all = planRank({ source: tp8, files: filesOf(indexes), destination: { kind: 'strategy', strategy: tp4 }, rank: 1 });
    expect(all.tensors.map((t) => t.name)).toEqual(['w', 'v', 'global_step', 'moment1.w']);
    const only = planRank({ source: tp8, files: filesOf(indexes), destination: { kind: 'strategy', strategy: tp4 }, rank: 1, only: new Set(['w', 'v']) });
    expect(only.tensors.map((t) => t.name)).toEqual(['w', 'v']);
    expect(only.sliceBytes).toBe((16 * 4 * 4) + (4 * 16 * 2));
    expect(only.readBytes).toBe(only.sliceBytes);
    expect(planRank({ source: tp8, files: filesOf(indexes), destination: { kind: 'strategy', strategy: tp4 }, rank: 1, only: new Set(['v', 'global_step']) }).tensors.map((t) => t.name)).toEqual(['v', 'global_step']);
  });

  it('parameters that share a layout (layers) get the same plan each, in arrays of their own', async () => {
    const layer = (i: number) => ({ [`l${i}.w`]: layoutOf([8], [0, -1]), [`l${i}.v`]: layoutOf([8], [-1, 0]) });
    const src = strategyOf([{ ...layer(0), ...layer(1), ...layer(2) }]);
    const dst = strategyOf([{ ...Object.fromEntries(Object.keys({ ...layer(0), ...layer(1), ...layer(2) }).map((n) => [n, layoutOf([4], n.endsWith('w') ? [0, -1] : [-1, 0])])) }]);
    const full = [0, 1, 2].flatMap((i) => [{ ...w, name: `l${i}.w`, data: ramp(64 * 16).map((x) => x ^ i) }, { ...v, name: `l${i}.v`, data: ramp(4 * 128).map((x) => x ^ i) }]);
    const { plan, out } = await run(src, shardedFiles(src, full), { kind: 'strategy', strategy: dst }, 1);
    for (const t of full) expect(out.get(t.name), t.name).toEqual(extractBox(t.data, t.shape, t.name.endsWith('w') ? { offsets: [16, 0], sizes: [16, 4] } : { offsets: [0, 16], sizes: [4, 16] }, DTYPE_BYTES[t.dtype]));
    const ws = plan.tensors.filter((t) => t.name.endsWith('.w'));
    expect(ws.map((t) => t.box)).toEqual([0, 1, 2].map(() => ({ offsets: [16, 0], sizes: [16, 4] })));
    ws[0].shape.push(99);
    ws[0].box.offsets[0] = -1;
    expect([ws[1].shape, ws[1].box.offsets]).toEqual([[16, 4], [16, 0]]);
  });

  it('merge rebuilds full tensors across pieces split like .ckpt records', async () => {
    const indexes = shardedFiles(tp8, [w, v], true);
    const { plan, out } = await run(tp8, indexes, { kind: 'single' }, 0);
    expect(out.get('w')).toEqual(w.data);
    expect(out.get('v')).toEqual(v.data);
    expect(plan.readBytes).toBe(plan.sliceBytes);
  });

  it('prefers the holder with the same local rank among replicas', () => {
    const a = strategyOf([{ m: layoutOf([2, 1, 4, 1], [1, 0]) }]);
    const m = { name: 'm', dtype: 'F32' as const, shape: [96, 16], data: ramp(96 * 64) };
    const indexes = shardedFiles(a, [m]);
    const plan = planRank({ source: a, files: filesOf(indexes), destination: { kind: 'strategy', strategy: a }, rank: 5 });
    expect(plan.files.map((f) => f.rank)).toEqual([5]);
    const merged = planRank({ source: a, files: filesOf(indexes), destination: { kind: 'single' }, rank: 0 });
    expect(merged.files.map((f) => f.rank)).toEqual([0, 1, 2, 3]);
  });

  it('falls back to another replica when a rank file is missing, and says which ranks when none is left', () => {
    const a = strategyOf([{ m: layoutOf([2, 4], [0, -1]) }]);
    const m = { name: 'm', dtype: 'F32' as const, shape: [8, 2], data: ramp(64) };
    const indexes = shardedFiles(a, [m]);
    indexes.delete(1);
    const plan = planRank({ source: a, files: filesOf(indexes), destination: { kind: 'single' }, rank: 0 });
    expect(plan.files.map((f) => f.rank)).toEqual([0, 2, 3, 5]);
    indexes.delete(5);
    expect(() => planRank({ source: a, files: filesOf(indexes), destination: { kind: 'single' }, rank: 0 })).toThrow(
      "parameter 'm': the piece at [2,0] of size [2,2] is only in rank_1, rank_5, and those checkpoint files are missing",
    );
  });

  it('names the file whose slice shape disagrees with the others', () => {
    const indexes = shardedFiles(tp8, [w, v]);
    const bad = indexes.get(6)!.tensors.get('w')!;
    bad.shape = [9, 4];
    expect(() => planRank({ source: tp8, files: filesOf(indexes), destination: { kind: 'single' }, rank: 0 })).toThrow(
      "ckpt/rank_6/net.ckpt: parameter 'w' has slice shape [9,4], which with the strategy means full shape [72,4], but ckpt/rank_0/net.ckpt means [64,4]",
    );
  });

  it('a destination rank of stage 1 touches only stage 1 files', async () => {
    const two = strategyOf([{ a: layoutOf([2], [0]) }, { b: layoutOf([2], [-1, 0]) }]);
    const a = { name: 'a', dtype: 'I32' as const, shape: [4], data: ramp(16) };
    const b = { name: 'b', dtype: 'I8' as const, shape: [3, 4], data: ramp(12) };
    const indexes = shardedFiles(two, [a, b]);
    const dst = strategyOf([{ a: layoutOf([1], [-1]) }, { b: layoutOf([1], [-1, -1]) }]);
    expect(sourceStagesFor(two, { kind: 'strategy', strategy: dst }, 1)).toEqual([1]);
    const { plan, out } = await run(two, indexes, { kind: 'strategy', strategy: dst }, 1);
    expect(plan.stage).toBe(1);
    expect(plan.files.map((f) => f.rank)).toEqual([2, 3]);
    expect(out.get('b')).toEqual(b.data);
    expect([...out.keys()]).toEqual(['b']);
  });

  it('rejects a destination rank outside the destination world', () => {
    expect(() => planRank({ source: tp8, files: new Map(), destination: { kind: 'strategy', strategy: tp4 }, rank: 4 })).toThrow(
      '--rank 4 is outside the destination\'s 4 ranks (1 stage(s) × 4)',
    );
  });
});

describe('never-seen layouts (property, in memory)', () => {
  it.each(Array.from({ length: 300 }, (_, i) => i + 1))('seed %i: every destination slice equals the slice of the full tensor', async (seed) => {
    const ckpt = randomCheckpoint(seed);
    const indexes = new Map([...ckpt.rankFiles].map(([rank, tensors]) => [rank, memoryIndex(`r${rank}`, tensors, seed % 2 === 0)]));
    const dst = randomDestination(seed, ckpt);
    for (let rank = 0; rank < dst.stageCount * dst.stageDevices; rank++) {
      const { plan, out } = await run(ckpt.strategy, indexes, { kind: 'strategy', strategy: dst }, rank);
      const stageOfRank = Math.floor(rank / dst.stageDevices);
      for (const t of plan.tensors) {
        const truth = ckpt.full.get(t.name)!;
        expect(out.get(t.name), `${t.name} rank ${rank}`).toEqual(extractBox(truth.data, truth.shape, t.box, DTYPE_BYTES[truth.dtype]));
      }
      const expected = [...dst.params.values()].filter((p) => p.layoutByStage.has(stageOfRank)).length + 1;
      expect(plan.tensors.length).toBe(expected);
      expect(plan.readBytes).toBe(plan.sliceBytes);
    }
    const { out } = await run(ckpt.strategy, indexes, { kind: 'single' }, 0);
    for (const [name, t] of ckpt.full) expect(out.get(name), name).toEqual(t.data);
  });
});
