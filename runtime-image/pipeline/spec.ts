import type { TensorMeta } from '../tensor.js';

/**
 * What every rank of a group knows about the whole pipeline (derived from the same ONNX graph and
 * cut on every rank): the model's inputs/outputs and the tensor names each stage consumes/produces.
 */
export interface PipelineSpec {
  modelInputs: TensorMeta[];
  modelOutputs: TensorMeta[];
  stages: Array<{ inputs: string[]; outputs: string[] }>;
}

/** Where a rank sits. With tensorParallel = 1 a stage is one rank; shards of a stage come next. */
export interface RankPosition {
  rank: number;
  stage: number;
  /** Index of this rank among its stage's tensor-parallel shards (0 = the stage leader). */
  shard: number;
  stages: number;
  tensorParallel: number;
}

export function positionOf(rank: number, stages: number, tensorParallel: number): RankPosition {
  return { rank, stage: Math.floor(rank / tensorParallel), shard: rank % tensorParallel, stages, tensorParallel };
}

/** The rank that receives a stage's traffic (its first shard). */
export function stageLeader(stage: number, tensorParallel: number): number {
  return stage * tensorParallel;
}

/**
 * Names that must travel from stage k to stage k+1: everything a later stage or the model's outputs
 * still need that exists by the end of stage k (model inputs and outputs of stages ≤ k). This is how
 * a skip connection that jumps several stages reaches its consumer.
 */
export function carriedAfter(spec: PipelineSpec, k: number): string[] {
  const available = new Set(spec.modelInputs.map((t) => t.name));
  for (let j = 0; j <= k; j++) for (const n of spec.stages[j].outputs) available.add(n);
  const needed = new Set<string>(spec.modelOutputs.map((t) => t.name));
  for (let j = k + 1; j < spec.stages.length; j++) for (const n of spec.stages[j].inputs) needed.add(n);
  return [...needed].filter((n) => available.has(n)).sort();
}
