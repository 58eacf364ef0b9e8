import type { DecryptionOptions } from '../checkpoint/types.js';
import type { DType } from '../dtype.js';
import { planRank, type ReadPlan, sourceStagesFor } from '../plan/planner.js';
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
}

export interface DestinationSlice {
  tensors: Map<string, { dtype: DType; shape: number[]; data: Uint8Array }>;
  stage: number;
  stats: { readBytes: number; sliceBytes: number; bytesTransferred: number; requests: number };
  plan: ReadPlan;
}

/**
 * The runtime's loader: rank R's slice of every parameter of its stage, read from exactly the byte
 * ranges that hold it (only the files of R's stage are opened).
 */
export async function loadDestinationSlice(opts: LoadDestinationSliceOptions): Promise<DestinationSlice> {
  const source = await CheckpointSource.open({ checkpoint: opts.checkpoint, strategy: opts.strategy, decryption: opts.decryption });
  try {
    const destination = await resolveDestination(source, { dstStrategy: opts.dstStrategy, target: opts.target });
    const { files, indexes } = await source.filesOf(sourceStagesFor(source.strategy, destination, opts.rank));
    const plan = planRank({ source: source.strategy, files, destination, rank: opts.rank });
    const tensors: DestinationSlice['tensors'] = new Map();
    const stats: ExecuteStats = await executePlan(
      plan,
      indexes,
      (t, data) => void tensors.set(t.name, { dtype: t.dtype, shape: t.shape, data }),
      // Everything stays in memory anyway, so one batch: reads of all tensors overlap.
      { onProgress: opts.onProgress, concurrency: opts.concurrency, batchBytes: Number.POSITIVE_INFINITY },
    );
    return { tensors, stage: plan.stage, plan, stats: { readBytes: plan.readBytes, sliceBytes: plan.sliceBytes, bytesTransferred: stats.bytesTransferred, requests: stats.requests } };
  } finally {
    await source.close();
  }
}
