// "Never seen" checkpoints: random layouts (device matrices, nested maps, optimizer sharding, uneven
// splits, pipeline stages with tied parameters, replicas saved once), written as real .ckpt or
// safetensors files with our writer plus a protobuf or JSON strategy, then resharded to another random
// layout and merged through the CLI; every destination slice must equal the slice of the ground truth.
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { cli } from './cli-harness.js';
import { readTensorBytes } from '../../core/checkpoint/read.js';
import { createTensorFileWriter } from '../../core/checkpoint/writer.js';
import { indexCkpt } from '../../core/ckpt/reader.js';
import { DTYPE_BYTES } from '../../core/dtype.js';
import { rankBox } from '../../core/layout/box.js';
import { extractBox, randomCheckpoint, randomDestination, rngOf, type RandomCheckpoint } from '../../core/layout/test-builders.js';
import { loadDestinationSlice } from '../../core/reshard/load.js';
import { indexSafetensors } from '../../core/safetensors/reader.js';
import { openLocalSource } from '../../core/storage/source.js';
import { strategyToJson, strategyToProtobuf } from '../../core/strategy/writer.js';
import type { Strategy } from '../../core/strategy/types.js';

afterEach(() => vi.restoreAllMocks());

interface Written {
  root: string;
  checkpoint: string;
  strategy: string;
  format: 'safetensors' | 'mindspore-ckpt';
}

/** Writes a random checkpoint as MindSpore lays it out: rank_<N>/net-1_1.<ext> and a strategy. */
async function writeCheckpoint(seed: number, ckpt: RandomCheckpoint): Promise<Written> {
  const rng = rngOf(seed * 7919);
  const root = mkdtempSync(join(tmpdir(), `never-seen-${seed}-`));
  const format = rng.chance(0.5) ? 'safetensors' : 'mindspore-ckpt';
  const ext = format === 'safetensors' ? 'safetensors' : 'ckpt';
  for (const [rank, tensors] of ckpt.rankFiles) {
    mkdirSync(join(root, 'ckpt', `rank_${rank}`), { recursive: true });
    const w = await createTensorFileWriter(join(root, 'ckpt', `rank_${rank}`, `net-1_1.${ext}`), format, tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })), { crc: format === 'mindspore-ckpt' && rng.chance(0.3), ckptChunkBytes: rng.chance(0.5) ? 7 : undefined });
    for (const t of tensors) await w.writeAt(t.name, 0, t.data);
    await w.commit();
  }
  // JSON strategies may state the full shape; protobuf ones never do.
  const json = rng.chance(0.5);
  if (json && rng.chance(0.5)) for (const p of ckpt.strategy.params.values()) for (const l of p.layoutByStage.values()) l.tensorShape = ckpt.full.get(p.name)!.shape;
  let strategy: string;
  if (ckpt.strategy.stageCount > 1 && rng.chance(0.5)) {
    strategy = join(root, 'strategy');
    mkdirSync(strategy);
    for (let s = 0; s < ckpt.strategy.stageCount; s++) {
      const file = join(strategy, `src_strategy_${s * ckpt.strategy.stageDevices}.${json ? 'json' : 'ckpt'}`);
      writeFileSync(file, json ? strategyToJson(ckpt.strategy, { stage: s }) : strategyToProtobuf(ckpt.strategy, { stage: s }));
    }
  } else {
    strategy = join(root, `strategy.${json ? 'json' : 'ckpt'}`);
    writeFileSync(strategy, json ? strategyToJson(ckpt.strategy) : strategyToProtobuf(ckpt.strategy));
  }
  return { root, checkpoint: join(root, 'ckpt'), strategy, format };
}

async function readOutput(path: string) {
  const source = await openLocalSource(path);
  const index = path.endsWith('.ckpt') ? await indexCkpt(source) : await indexSafetensors(source);
  const out = new Map<string, Uint8Array>();
  for (const e of index.tensors.values()) out.set(e.name, await readTensorBytes(index, e, 0, e.byteLength));
  await source.close();
  return { index, out };
}

/** Every tensor of every destination rank equals the ground truth cut to the rank's box. */
async function expectResharded(ckpt: RandomCheckpoint, dst: Strategy, outDir: string, ext: string) {
  for (let rank = 0; rank < dst.stageCount * dst.stageDevices; rank++) {
    const stage = Math.floor(rank / dst.stageDevices);
    const { out } = await readOutput(join(outDir, `rank_${rank}`, `model.${ext}`));
    const expectedNames = [...dst.params.values()].filter((p) => p.layoutByStage.has(stage)).map((p) => p.name).concat('global_step').sort();
    expect([...out.keys()].sort(), `rank ${rank} tensors`).toEqual(expectedNames);
    for (const name of expectedNames) {
      const truth = ckpt.full.get(name)!;
      const layout = dst.params.get(name)?.layoutByStage.get(stage);
      const box = layout ? rankBox(layout, truth.shape, rank % dst.stageDevices) : { offsets: truth.shape.map(() => 0), sizes: truth.shape };
      expect(Buffer.from(out.get(name)!).equals(Buffer.from(extractBox(truth.data, truth.shape, box, DTYPE_BYTES[truth.dtype]))), `${name} on rank ${rank}`).toBe(true);
    }
  }
}

const SEEDS = Array.from({ length: 40 }, (_, i) => 1000 + i);

describe('never-seen checkpoints through the CLI', () => {
  it.each(SEEDS)('seed %i: reshard to a random layout and merge give the ground-truth slices', async (seed) => {
    const ckpt = randomCheckpoint(seed);
    const dst = randomDestination(seed, ckpt);
    const w = await writeCheckpoint(seed, ckpt);
    const dstFile = join(w.root, 'dst.json');
    for (const p of dst.params.values()) for (const l of p.layoutByStage.values()) l.tensorShape = ckpt.full.get(p.name)!.shape;
    writeFileSync(dstFile, strategyToJson(dst));
    const format = seed % 3 === 0 ? 'ckpt' : 'safetensors';
    const r = await cli(['reshard', '--checkpoint', w.checkpoint, '--strategy', w.strategy, '--dst-strategy', dstFile, '--out', join(w.root, 'out'), '--format', format]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    await expectResharded(ckpt, dst, join(w.root, 'out'), format);

    const merged = join(w.root, `merged.${format === 'ckpt' ? 'ckpt' : 'safetensors'}`);
    const m = await cli(['merge', '--checkpoint', w.checkpoint, '--strategy', w.strategy, '--out', merged]);
    expect(m.stderr).toBe('');
    const { out } = await readOutput(merged);
    expect([...out.keys()].sort()).toEqual([...ckpt.full.keys()].sort());
    for (const [name, t] of ckpt.full) expect(Buffer.from(out.get(name)!).equals(Buffer.from(t.data)), name).toBe(true);
  });

  it.each(SEEDS.slice(0, 15))('seed %i: a layout derived by --tp gives the ground-truth slices, and loadDestinationSlice agrees', async (seed) => {
    const ckpt = randomCheckpoint(seed);
    const w = await writeCheckpoint(seed, ckpt);
    const tp = 1 + (seed % 4);
    const predict = join(w.root, 'predict.json');
    const l = await cli(['layout', '--strategy', w.strategy, '--checkpoint', w.checkpoint, '--tp', String(tp), '--out', predict]);
    expect(l.stderr).toBe('');
    const r = await cli(['reshard', '--checkpoint', w.checkpoint, '--strategy', w.strategy, '--tp', String(tp), '--out', join(w.root, 'out')]);
    expect(r.stderr).toBe('');
    const { parseStrategyFiles } = await import('../../core/strategy/reader.js');
    const { readFileSync } = await import('node:fs');
    const dst = parseStrategyFiles([{ name: 'predict.json', bytes: readFileSync(predict) }], predict);
    expect(dst.stageDevices).toBe(tp);
    await expectResharded(ckpt, dst, join(w.root, 'out'), 'safetensors');

    const rank = dst.stageCount * tp - 1;
    const slice = await loadDestinationSlice({ checkpoint: w.checkpoint, strategy: w.strategy, dstStrategy: predict, rank });
    const { out } = await readOutput(join(w.root, 'out', `rank_${rank}`, 'model.safetensors'));
    expect([...slice.tensors.keys()].sort()).toEqual([...out.keys()].sort());
    for (const [name, t] of slice.tensors) expect(Buffer.from(t.data).equals(Buffer.from(out.get(name)!)), name).toBe(true);
    expect(slice.stats.readBytes).toBe(slice.stats.sliceBytes);
    // The two phases bench:load reports are both measured.
    for (const ms of [slice.stats.planMs, slice.stats.readMs]) expect(ms).toBeGreaterThan(0);
    // Files indexed: every file read, plus at most one more per source stage (a missed guess), unless
    // the files differ (replicas saved once, ...) and the plan fell back to every file of the stages.
    const read = [...new Set(slice.plan.files.map((f) => f.rank))];
    const extra = slice.stats.indexedRanks.filter((r) => !read.includes(r));
    expect(slice.stats.indexedRanks).toEqual(expect.arrayContaining(read));
    if (extra.length > ckpt.strategy.stageCount) {
      const d = ckpt.strategy.stageDevices;
      const stages = [...new Set(read.map((r) => Math.floor(r / d)))];
      const all = [...ckpt.rankFiles.keys()].filter((r) => stages.includes(Math.floor(r / d))).sort((a, b) => a - b);
      expect(slice.stats.indexedRanks).toEqual(all);
    }
  });
});

describe('loadDestinationSlice opens only the files a rank reads', () => {
  // Megatron-style pair over 8 training devices: w_in split on dim 0, w_out on dim 1; a protobuf
  // strategy (no shapes), so the derived layout needs one file's slice shapes.
  const SRC = 8;
  const [ROWS, COLS] = [16, 32];
  const full = (seed: number) => Uint8Array.from({ length: ROWS * COLS * 2 }, (_, i) => (i * 31 + seed * 17) % 251);
  const win = full(1);
  const wout = full(2);
  /** Rows [r0, r1) and columns [c0, c1) of a [ROWS, COLS] fp16 tensor. */
  const cut = (t: Uint8Array, r0: number, r1: number, c0: number, c1: number) => {
    const out: number[] = [];
    for (let r = r0; r < r1; r++) out.push(...t.subarray((r * COLS + c0) * 2, (r * COLS + c1) * 2));
    return Uint8Array.from(out);
  };

  /** `flipped` ranks write their records in the other order (w_out first): laid out unlike the rest. */
  async function writeTp8(flipped: (rank: number) => boolean = () => false): Promise<{ checkpoint: string; strategy: string }> {
    const root = mkdtempSync(join(tmpdir(), 'few-files-'));
    const layout = (tensorMap: number[]) => ({ devMatrix: [SRC], tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 });
    const strategy: Strategy = {
      uri: 'tp8', stageCount: 1, stageDevices: SRC,
      params: new Map([
        ['w_in', { name: 'w_in', stages: [0], layoutByStage: new Map([[0, layout([0, -1])]]) }],
        ['w_out', { name: 'w_out', stages: [0], layoutByStage: new Map([[0, layout([-1, 0])]]) }],
      ]),
    };
    writeFileSync(join(root, 'strategy.ckpt'), strategyToProtobuf(strategy));
    for (let r = 0; r < SRC; r++) {
      mkdirSync(join(root, 'ckpt', `rank_${r}`), { recursive: true });
      const rows = ROWS / SRC;
      const cols = COLS / SRC;
      const specs = [
        { name: 'w_in', dtype: 'F16' as const, shape: [rows, COLS] },
        { name: 'w_out', dtype: 'F16' as const, shape: [ROWS, cols] },
      ];
      const w = await createTensorFileWriter(join(root, 'ckpt', `rank_${r}`, 'net-1_1.ckpt'), 'mindspore-ckpt', flipped(r) ? specs.reverse() : specs);
      await w.writeAt('w_in', 0, cut(win, r * rows, (r + 1) * rows, 0, COLS));
      await w.writeAt('w_out', 0, cut(wout, 0, ROWS, r * cols, (r + 1) * cols));
      await w.commit();
    }
    return { checkpoint: join(root, 'ckpt'), strategy: join(root, 'strategy.ckpt') };
  }

  it('TP 8 to TP 4: rank R indexes exactly training ranks 2R and 2R+1 and gets its slices', async () => {
    const w = await writeTp8();
    for (let rank = 0; rank < 4; rank++) {
      const slice = await loadDestinationSlice({ ...w, target: { world: 4, stages: 1, tp: 4 }, rank });
      expect(slice.stats.indexedRanks).toEqual([2 * rank, 2 * rank + 1]);
      expect(slice.plan.files.map((f) => f.rank)).toEqual([2 * rank, 2 * rank + 1]);
      expect(Buffer.from(slice.tensors.get('w_in')!.data)).toEqual(Buffer.from(cut(win, rank * 4, rank * 4 + 4, 0, COLS)));
      expect(Buffer.from(slice.tensors.get('w_out')!.data)).toEqual(Buffer.from(cut(wout, 0, ROWS, rank * 8, rank * 8 + 8)));
    }
  });

  it('plans from a file\'s own index when it is laid out unlike the file it was guessed from', async () => {
    // Odd ranks hold their records in the other order: the guess (every file like rank 2R) is wrong
    // about rank 2R+1's byte ranges, and its slices come out right only from its own index.
    const w = await writeTp8((r) => r % 2 === 1);
    for (let rank = 0; rank < 4; rank++) {
      const slice = await loadDestinationSlice({ ...w, target: { world: 4, stages: 1, tp: 4 }, rank });
      expect(slice.stats.indexedRanks).toEqual([2 * rank, 2 * rank + 1]);
      expect(Buffer.from(slice.tensors.get('w_in')!.data)).toEqual(Buffer.from(cut(win, rank * 4, rank * 4 + 4, 0, COLS)));
      expect(Buffer.from(slice.tensors.get('w_out')!.data)).toEqual(Buffer.from(cut(wout, 0, ROWS, rank * 8, rank * 8 + 8)));
    }
  });

  it('TP 8 to TP 16: rank R indexes only training rank R / 2', async () => {
    const w = await writeTp8();
    for (const rank of [0, 5, 15]) {
      const slice = await loadDestinationSlice({ ...w, target: { world: 16, stages: 1, tp: 16 }, rank });
      const src = Math.floor(rank / 2);
      expect(slice.stats.indexedRanks).toEqual([src]);
      expect(Buffer.from(slice.tensors.get('w_in')!.data)).toEqual(Buffer.from(cut(win, rank, rank + 1, 0, COLS)));
      expect(Buffer.from(slice.tensors.get('w_out')!.data)).toEqual(Buffer.from(cut(wout, 0, ROWS, rank * 2, rank * 2 + 2)));
    }
  });
});
