import { readFile } from 'node:fs/promises';
import type { RankConfig } from '../core/deployment.js';
import { parseKey } from '../core/ckpt/decrypt.js';
import { ShardserveError } from '../core/errors.js';
import type { parseOnnx } from '../core/onnx/model.js';
import { readOnnxSkeleton } from '../core/onnx/skeleton.js';
import { planPipeline, type PipelinePlan, type StageTensor } from '../core/onnx/partition.js';
import { buildStageModelInMemory, checkpointNamesFor } from '../core/onnx/bind.js';
import { loadDestinationSlice } from '../core/reshard/load.js';
import { loadStrategy } from '../core/reshard/session.js';
import { openParent } from '../core/storage/storage.js';
import type { Strategy } from '../core/strategy/types.js';
import type { PipelineSpec, RankPosition } from './pipeline/spec.js';
import type { LoadedStage } from './rank.js';
import { oipOfOnnxElemType, type TensorMeta } from './tensor.js';

function metaOf(t: StageTensor): TensorMeta {
  return { name: t.name, datatype: oipOfOnnxElemType(t.elemType), shape: (t.shape ?? []).map((d) => (typeof d === 'number' ? d : -1)) };
}

export function specOfPlan(plan: PipelinePlan): PipelineSpec {
  return {
    modelInputs: plan.inputs.map(metaOf),
    modelOutputs: plan.outputs.map(metaOf),
    stages: plan.stages.map((s) => ({ inputs: s.inputs.map((t) => t.name), outputs: s.outputs.map((t) => t.name) })),
  };
}

/**
 * The pipeline cut every rank agrees on: by explicit cut tensors when the configuration gives them,
 * else by the training stage of each parameter (through the rename map to initializer names).
 */
export function planFor(model: ReturnType<typeof parseOnnx>, strategy: Strategy, config: RankConfig, stages: number): PipelinePlan {
  const uri = config.model.uri;
  const cutTensors = config.model.cutTensors;
  if (!cutTensors?.length && stages > 1 && strategy.stageCount !== stages) {
    throw new ShardserveError('LayoutMismatch',
      `strategy has ${strategy.stageCount} stage${strategy.stageCount === 1 ? '' : 's'}, spec asks for ${stages}` +
      (strategy.stageCount === 1 ? ' (give model.cutTensors to cut a single-stage network)' : ''),
      { file: config.checkpoint.strategy, param: 'parallelism.pipelineStages' });
  }
  const stageOfInit = new Map<string, number>();
  for (const p of strategy.params.values()) stageOfInit.set(config.model.parameterNames?.[p.name] ?? p.name, Math.min(...p.stages));
  return planPipeline(model, {
    stages,
    stageOfInitializer: (name) => (stages === 1 ? (stageOfInit.has(name) ? 0 : undefined) : stageOfInit.get(name)),
    cutTensors: cutTensors?.length ? cutTensors : undefined,
    uri,
  });
}

/**
 * The rank's real load path: the ONNX graph, the pipeline cut, exactly this rank's slice of the
 * checkpoint (only its bytes are read), bound into its stage's ONNX model. The weights stay in the
 * slice's buffers and reach onnxruntime as in-memory external data: they are not copied into the
 * protobuf nor written to disk, whatever their size.
 */
export async function loadCheckpointStage(config: RankConfig, position: RankPosition, onProgress: (done: number, total: number) => void): Promise<LoadedStage> {
  const modelUri = config.model.uri;
  const { storage, key } = await openParent(modelUri);
  // The model's large weights are left unread: the slice replaces this stage's, the other stages' are
  // not needed; only a large constant of this stage is read, below.
  const modelSource = await storage.open(key);
  try {
    const skeleton = await readOnnxSkeleton(modelSource, modelUri);
    const model = skeleton.model;
    const strategy = await loadStrategy(config.checkpoint.strategy);
    const plan = planFor(model, strategy, config, position.stages);
    const decryption = config.checkpoint.decryption
      ? { key: parseKey(new Uint8Array(await readFile(config.checkpoint.decryption.keyFile)), config.checkpoint.decryption.keyFile), mode: config.checkpoint.decryption.mode }
      : undefined;
    const slice = await loadDestinationSlice({
      // Only what this stage's graph takes from the checkpoint (not optimizer states: twice the weights with Adam).
      only: checkpointNamesFor(plan.stages[position.stage].initializers, config.model.parameterNames),
      checkpoint: config.checkpoint.uri,
      strategy: config.checkpoint.strategy,
      target: { world: position.stages * position.tensorParallel, stages: position.stages, tp: position.tensorParallel },
      rank: position.rank,
      decryption,
      onProgress,
    });
    if (slice.stage !== position.stage) {
      throw new ShardserveError('LayoutMismatch', `rank ${position.rank}: the checkpoint plan puts it in stage ${slice.stage}, the runtime in stage ${position.stage}`);
    }
    const replaced = new Set([...slice.tensors.keys()].map((name) => config.model.parameterNames?.[name] ?? name));
    await skeleton.fill(plan.stages[position.stage].initializers.filter((name) => !replaced.has(name)));
    const { onnx, externalData } = buildStageModelInMemory(model, plan, position.stage, slice.tensors, { parameterNames: config.model.parameterNames, uri: modelUri });
    return { spec: specOfPlan(plan), onnx, externalData, sliceBytes: slice.stats.sliceBytes, checkpointMs: { plan: slice.stats.planMs, reads: slice.stats.readMs } };
  } finally {
    await modelSource.close();
  }
}
