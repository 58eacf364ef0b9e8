import type { CheckpointIndex, DecryptionOptions } from '../checkpoint/types.js';
import { type DType, sameShape } from '../dtype.js';
import { resolveTarget } from '../layout/derive.js';
import { type Destination, planRank, type ReadPlan, type SourceFile, sourceStagesFor } from '../plan/planner.js';
import { executePlan, type ExecuteStats } from './execute.js';
import { CheckpointSource, resolveDestination } from './session.js';

export interface LoadDestinationSliceOptions {
  checkpoint: string;
  strategy: string;
  /** Inference world; omitted (and no dstStrategy) = a single device. */
  target?: { world: number; stages: number; tp: number };
  dstStrategy?: string;
  rank: number;
  decryption?: DecryptionOptions;
  onProgress?: (done: number, total: number) => void;
  /** Reads in flight per file (default 4). */
  concurrency?: number;
  /** Only these parameters (default: every parameter of the rank's stage; see PlanInput.only). */
  only?: ReadonlySet<string>;
}

export interface DestinationSlice {
  tensors: Map<string, { dtype: DType; shape: number[]; data: Uint8Array }>;
  stage: number;
  stats: {
    readBytes: number; sliceBytes: number; bytesTransferred: number; requests: number;
    /** Wall time, in ms, before the first read (strategy, destination layout, indexes, plan). */
    planMs: number;
    /** Wall time, in ms, of the reads. */
    readMs: number;
    /** Training ranks whose files were indexed (those read, plus any opened only to plan). */
    indexedRanks: number[];
  };
  plan: ReadPlan;
}

/**
 * The plan of one destination rank, indexing only the files it reads (plus, when the guess below
 * misses, one more file per source stage) instead of every file of the stages: a first plan assumes
 * every file of a stage holds what one representative file holds (the one `prefer` names, when
 * present), which names the files to index; the real plan is then made from those files' own
 * indexes (their shapes and dtypes are cross-checked as usual). When that plan cannot be made from
 * them (a file lacks a tensor, a piece's holder is missing, ...) every file of the stages is indexed
 * and planned from, exactly as before, so errors are the same.
 */
async function planReadingFewFiles(source: CheckpointSource, destination: Destination, rank: number, prefer: (stage: number) => number, only?: ReadonlySet<string>): Promise<{ plan: ReadPlan; indexes: Map<number, CheckpointIndex> }> {
  const stages = sourceStagesFor(source.strategy, destination, rank);
  const full = async () => {
    const { files, indexes } = await source.filesOf(stages);
    return { plan: planRank({ source: source.strategy, files, destination, rank, only }), indexes };
  };
  const firsts = stages.map((s) => source.representative(s, prefer)).filter((r): r is number => r !== undefined);
  if (firsts.length !== stages.length) return full();
  const fileOf = (r: number, index: CheckpointIndex): SourceFile => ({ rank: r, uri: source.storage.uriOf(source.rankKeys.get(r)!), tensors: index.tensors });
  let needed: Set<number>;
  let guess: ReadPlan;
  // Each rank's stage representative, the file it is probably laid out like.
  const layoutOf = new Map<number, CheckpointIndex>();
  try {
    const assumed = new Map<number, SourceFile>();
    for (let i = 0; i < stages.length; i++) {
      const first = await source.index(firsts[i])!;
      for (const r of source.presentRanks(stages[i])) {
        assumed.set(r, fileOf(r, first));
        layoutOf.set(r, first);
      }
    }
    guess = planRank({ source: source.strategy, files: assumed, destination, rank, only });
    needed = new Set([...firsts, ...guess.tensors.flatMap((t) => t.copies.map((c) => c.rank))]);
  } catch {
    return full();
  }
  const ranks = [...needed].sort((a, b) => a - b);
  // The other files of a stage are laid out like its representative: their record headers are read
  // ahead, all at once (on a cold page cache, one after the other costs a disk round trip each).
  const indexes = await source.indexesOf(ranks, (r) => layoutOf.get(r));
  // Files laid out exactly like their representative (the usual case: one training job, one layout)
  // give the plan the guess gave: same holders, same byte ranges (see sameLayout).
  if (ranks.every((r) => sameLayout(indexes.get(r)!, layoutOf.get(r)))) return { plan: guess, indexes };
  const files = new Map(ranks.map((r) => [r, fileOf(r, indexes.get(r)!)]));
  try {
    return { plan: planRank({ source: source.strategy, files, destination, rank, only }), indexes };
  } catch {
    return full();
  }
}

/**
 * True when `a` holds exactly the tensors `b` holds, with the same dtypes, shapes and byte ranges.
 * Then a plan made as if a were b is a's plan: planRank reads nothing else of a file, and the holder
 * it picks for a piece (this rank's own, else the lowest) is among the files read either way.
 */
function sameLayout(a: CheckpointIndex, b: CheckpointIndex | undefined): boolean {
  if (!b || a === b) return a === b;
  if (a.tensors.size !== b.tensors.size) return false;
  for (const [name, x] of a.tensors) {
    const y = b.tensors.get(name);
    if (!y || x.dtype !== y.dtype || x.byteLength !== y.byteLength || !sameShape(x.shape, y.shape) || x.pieces.length !== y.pieces.length) return false;
    if (x.pieces.some((p, i) => p.offset !== y.pieces[i].offset || p.length !== y.pieces[i].length)) return false;
  }
  return true;
}

/**
 * The source rank of a stage most likely to hold the start of destination rank `rank`'s slice when
 * the destination has `dstDevices` ranks per stage: where a dimension split over the training
 * stage's devices is split over fewer (or more) destination devices, destination rank L starts at
 * source rank L × devices / dstDevices. Only a guess (replicas, other device orders), used to
 * choose which file to index first: a wrong guess costs one file's index, never correctness.
 */
function likelySourceRank(stageDevices: number, dstDevices: number, rank: number): (stage: number) => number {
  const local = rank % dstDevices;
  return (stage) => stage * stageDevices + Math.min(stageDevices - 1, Math.floor((local * stageDevices) / dstDevices));
}

/**
 * The runtime's loader: rank R's slice of every parameter of its stage, read from exactly the byte
 * ranges that hold it (only the files of R's stage are opened).
 */
export async function loadDestinationSlice(opts: LoadDestinationSliceOptions): Promise<DestinationSlice> {
  const t0 = performance.now();
  const source = await CheckpointSource.open({ checkpoint: opts.checkpoint, strategy: opts.strategy, decryption: opts.decryption });
  try {
    const d = source.strategy.stageDevices;
    // Devices per stage of a derived destination: resolveTarget's tp (it fills in what the target leaves out).
    const targetDevices = opts.target && !opts.dstStrategy ? resolveTarget(source.strategy, opts.target).tp : 1;
    const destination = await resolveDestination(source, { dstStrategy: opts.dstStrategy, target: opts.target }, likelySourceRank(d, targetDevices, opts.rank));
    const dstDevices = destination.kind === 'strategy' ? destination.strategy.stageDevices : 1;
    const { plan, indexes } = await planReadingFewFiles(source, destination, opts.rank, likelySourceRank(d, dstDevices, opts.rank), opts.only);
    const tensors: DestinationSlice['tensors'] = new Map();
    const t1 = performance.now();
    const stats: ExecuteStats = await executePlan(
      plan,
      indexes,
      (t, data) => void tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data }),
      // Everything stays in memory anyway, so one batch: reads of all tensors overlap.
      { onProgress: opts.onProgress, concurrency: opts.concurrency, batchBytes: Number.POSITIVE_INFINITY },
    );
    const planMs = t1 - t0;
    const readMs = performance.now() - t1;
    return { tensors, stage: plan.stage, plan, stats: { readBytes: plan.readBytes, sliceBytes: plan.sliceBytes, bytesTransferred: stats.bytesTransferred, requests: stats.requests, planMs, readMs, indexedRanks: source.indexedRanks } };
  } finally {
    await source.close();
  }
}
