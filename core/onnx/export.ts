/**
 * Per-rank ONNX export (our equivalent of MindSpore's per-rank MindIR export): each inference rank's
 * stage of the single-device graph with that rank's own weight slice bound, one self-contained file
 * per rank; with a world of 1, one merged single-device model.
 */
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { DecryptionOptions } from '../checkpoint/types.js';
import { ShardserveError } from '../errors.js';
import { loadDestinationSlice } from '../reshard/load.js';
import { loadStrategy } from '../reshard/session.js';
import { openParent } from '../storage/storage.js';
import type { Strategy } from '../strategy/types.js';
import { buildStageModel, checkpointNamesFor } from './bind.js';
import { type OnnxModel, parseOnnx } from './model.js';
import { checkStageLoads } from './ort-run.js';
import { type PipelinePlan, type StageTensor, planPipeline } from './partition.js';

export interface ExportOptions {
  /** The single-device ONNX graph (path or URI). */
  model: string;
  checkpoint: string;
  strategy: string;
  /** Inference layout; omitted parts default to the training stage count, tp 1, world = stages × tp. */
  world?: number;
  stages?: number;
  tp?: number;
  out: string;
  parameterNames?: Record<string, string>;
  cutTensors?: string[];
  externalDataThreshold?: number;
  decryption?: DecryptionOptions;
  /** Called after each rank's file is written. */
  onRank?: (file: ExportedFile) => void;
}

export interface ExportedFile {
  rank: number;
  stage: number;
  /** Path of the ONNX file (relative to `out`). */
  file: string;
  bytes: number;
  /** External-data file next to it, when the weights were too big to embed. */
  externalData?: string;
  readBytes: number;
}

export interface ExportResult {
  world: number;
  stages: number;
  tp: number;
  files: ExportedFile[];
  plan: PipelinePlan;
}

export async function readModel(uri: string): Promise<{ model: OnnxModel; bytes: Uint8Array }> {
  const { storage, key } = await openParent(uri);
  let bytes: Uint8Array;
  try {
    bytes = await storage.readAll(key);
  } catch (e) {
    throw new ShardserveError('NotFound', `${uri}: cannot read the ONNX model (${(e as Error).message.split('\n')[0]})`, { file: uri, cause: e });
  }
  return { model: parseOnnx(bytes, uri), bytes };
}

/**
 * The inference layout an export (or a deployment) runs with, checked against the training strategy.
 * Only tensorParallel 1 is supported for now.
 */
export function resolveExportLayout(strategy: Strategy, want: { world?: number; stages?: number; tp?: number }): { world: number; stages: number; tp: number } {
  const tp = want.tp ?? 1;
  if (tp > 1) {
    throw new ShardserveError('NotSupported', `tensor-parallel export (--tp ${tp}) is not supported yet; only --tp 1 (each stage on one rank) is`);
  }
  if (want.world === 1) {
    if (want.stages !== undefined && want.stages !== 1) throw new ShardserveError('Usage', `--world 1 runs one stage, got --stages ${want.stages}`);
    return { world: 1, stages: 1, tp: 1 };
  }
  const stages = want.stages ?? (want.world !== undefined ? want.world / tp : strategy.stageCount);
  if (!Number.isInteger(stages) || stages < 1) throw new ShardserveError('Usage', `--world ${want.world} is not a multiple of --tp ${tp}`);
  const world = want.world ?? stages * tp;
  if (world !== stages * tp) throw new ShardserveError('Usage', `--world ${world} must equal --stages ${stages} × --tp ${tp}`);
  if (stages > 1 && stages !== strategy.stageCount) {
    throw new ShardserveError('StageMismatch', `${strategy.uri}: the checkpoint was trained with ${strategy.stageCount} pipeline stage(s); a pipeline of ${stages} stages must use the same count (or --world 1 for one device)`, { file: strategy.uri });
  }
  return { world, stages, tp };
}

/** Training stage of each graph initializer, through the rename map; parameters shared by several stages pin nothing. */
export function stageOfInitializerFrom(strategy: Strategy, parameterNames: Record<string, string> = {}): (name: string) => number | undefined {
  const checkpointNameOf = new Map(Object.entries(parameterNames).map(([ckpt, init]) => [init, ckpt]));
  return (name) => {
    const param = strategy.params.get(checkpointNameOf.get(name) ?? name);
    return param && param.stages.length === 1 ? param.stages[0] : undefined;
  };
}

/** Initializer names of parameters the strategy places in several stages (tied weights). */
export function sharedParametersFrom(strategy: Strategy, parameterNames: Record<string, string> = {}): string[] {
  return [...strategy.params.values()].filter((p) => p.stages.length > 1).map((p) => parameterNames[p.name] ?? p.name);
}

function writeAtomically(path: string, bytes: Uint8Array): void {
  const temp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(temp, bytes);
    renameSync(temp, path);
  } catch (e) {
    rmSync(temp, { force: true });
    throw e;
  }
}

function describe(t: StageTensor) {
  return { name: t.name, dtype: t.dtype, shape: t.shape };
}

export async function exportRankModels(opts: ExportOptions): Promise<ExportResult> {
  const { model } = await readModel(opts.model);
  const strategy = await loadStrategy(opts.strategy);
  const layout = resolveExportLayout(strategy, { world: opts.world, stages: opts.stages, tp: opts.tp });
  const plan = planPipeline(model, {
    stages: layout.stages,
    stageOfInitializer: stageOfInitializerFrom(strategy, opts.parameterNames),
    sharedParameters: sharedParametersFrom(strategy, opts.parameterNames),
    cutTensors: layout.stages > 1 ? opts.cutTensors : undefined,
    uri: opts.model,
  });
  // Everything goes to a staging folder inside `out` first and moves into place only when every rank
  // built and loaded, so a bad weight in the last rank leaves no half-written export behind.
  mkdirSync(opts.out, { recursive: true });
  const staging = join(opts.out, `.export-${process.pid}.tmp`);
  rmSync(staging, { recursive: true, force: true });
  const files: ExportedFile[] = [];
  const externalName = 'model.onnx.data';
  try {
    for (let rank = 0; rank < layout.world; rank++) {
      const slice = await loadDestinationSlice({
        checkpoint: opts.checkpoint,
        strategy: opts.strategy,
        target: layout.world === 1 ? undefined : layout,
        rank,
        decryption: opts.decryption,
        only: checkpointNamesFor(plan.stages[layout.world === 1 ? 0 : Math.floor(rank / layout.tp)].initializers, opts.parameterNames),
      });
      const stage = layout.world === 1 ? 0 : slice.stage;
      const folder = layout.world === 1 ? '' : `rank_${rank}`;
      const dir = join(staging, folder);
      mkdirSync(dir, { recursive: true });
      const bytes = buildStageModel(model, plan, stage, slice.tensors, {
        parameterNames: opts.parameterNames,
        externalDataDir: dir,
        externalDataFile: externalName,
        externalDataThreshold: opts.externalDataThreshold,
        uri: opts.model,
      });
      const stagedPath = join(dir, 'model.onnx');
      writeFileSync(stagedPath, bytes);
      await checkStageLoads(stagedPath, plan.stages[stage], join(opts.out, folder, 'model.onnx'));
      const external = parseOnnx(bytes).graph?.initializer?.some((t) => t.dataLocation === 1);
      const exported: ExportedFile = {
        rank, stage, file: join(folder, 'model.onnx'), bytes: bytes.byteLength, readBytes: slice.stats.readBytes,
        ...(external ? { externalData: join(folder, externalName) } : {}),
      };
      files.push(exported);
      opts.onRank?.(exported);
    }
    for (const f of files) {
      mkdirSync(join(opts.out, f.file, '..'), { recursive: true });
      if (f.externalData) renameSync(join(staging, f.externalData), join(opts.out, f.externalData));
      else rmSync(join(opts.out, f.file, '..', externalName), { force: true });
      renameSync(join(staging, f.file), join(opts.out, f.file));
    }
  } finally {
    rmSync(staging, { recursive: true, force: true });
  }
  const manifest = {
    model: opts.model,
    layout,
    partition: plan.by,
    inputs: plan.inputs.map(describe),
    outputs: plan.outputs.map(describe),
    ranks: files.map((f) => ({ rank: f.rank, stage: f.stage, file: f.file, ...(f.externalData ? { externalData: f.externalData } : {}) })),
    stages: plan.stages.map((s) => ({ stage: s.stage, inputs: s.inputs.map(describe), outputs: s.outputs.map(describe), parameters: s.parameters })),
  };
  writeAtomically(join(opts.out, 'export.json'), new TextEncoder().encode(JSON.stringify(manifest, null, 2) + '\n'));
  return { ...layout, files, plan };
}
