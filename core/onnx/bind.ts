/**
 * Bind a rank's checkpoint weights into its stage of the network: every parameter the stage reads
 * becomes an initializer holding the rank's bytes. Weights travel embedded in the ONNX protobuf when
 * they fit; past the protobuf size limit they go to an ONNX external-data file next to the model.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { type DType, byteSize, sameShape } from '../dtype.js';
import { ShardserveError } from '../errors.js';
import type { OnnxModel, TensorProto } from './model.js';
import { dtypeOfOnnx, onnxDataType, onnxDataTypeName, serializeOnnx } from './model.js';
import { type PipelinePlan, extractStageModel } from './partition.js';

export interface StageWeight { dtype: DType; shape: number[]; data: Uint8Array }

export interface BuildStageOptions {
  /** Checkpoint parameter name -> graph initializer name, for names that differ. */
  parameterNames?: Record<string, string>;
  /** Where the external-data file goes when the weights are too big to embed; the model must be saved in this directory. */
  externalDataDir?: string;
  /** Name of the external-data file (relative to the model). Default `stage<k>.onnx.data`. */
  externalDataFile?: string;
  /** Total initializer bytes above which weights go to external data. Default 1.8 GiB (protobuf holds < 2 GiB). */
  externalDataThreshold?: number;
  /** Names the model in error messages. */
  uri?: string;
}

export const DEFAULT_EXTERNAL_DATA_THRESHOLD = Math.floor(1.8 * 1024 ** 3);
/** Tensors smaller than this stay embedded even when the rest goes external (as the onnx tools do). */
const EMBED_BELOW = 1024;
const ALIGN = 4096;

function tensorBytes(t: TensorProto): number {
  if (t.rawData) return t.rawData.byteLength;
  const n = (t.floatData?.length ?? 0) * 4 + (t.int32Data?.length ?? 0) * 4 + (t.int64Data?.length ?? 0) * 8
    + (t.doubleData?.length ?? 0) * 8 + (t.uint64Data?.length ?? 0) * 8;
  return n + (t.stringData ?? []).reduce((a, s) => a + s.byteLength, 0);
}

/**
 * The ONNX bytes of `stage` with `weights` (checkpoint name -> tensor) bound as its initializers.
 * Fails before anything is written with ShardserveError 'MissingWeight' or 'WeightMismatch' naming the
 * initializer. When weights go external, `<externalDataDir>/<externalDataFile>` is written (temp name,
 * then renamed) and the returned model must be saved in `externalDataDir` and loaded by path.
 */
export function buildStageModel(
  model: OnnxModel,
  plan: PipelinePlan,
  stage: number,
  weights: Map<string, StageWeight>,
  opts: BuildStageOptions = {},
): Uint8Array {
  const uri = opts.uri ?? 'model.onnx';
  const { stageModel, bound } = bindWeights(model, plan, stage, weights, opts);
  const graph = stageModel.graph!;
  const total = bound.reduce((a, t) => a + tensorBytes(t), 0);
  const threshold = opts.externalDataThreshold ?? DEFAULT_EXTERNAL_DATA_THRESHOLD;
  if (total > threshold) {
    if (!opts.externalDataDir) {
      throw new ShardserveError('Usage', `${uri}: stage ${stage} weights take ${total} bytes, over the ${threshold}-byte limit for one ONNX protobuf; give externalDataDir so they go to an external-data file`, { file: uri });
    }
    graph.initializer = writeExternalData(bound, opts.externalDataDir, opts.externalDataFile ?? `stage${stage}.onnx.data`);
  }
  return serializeOnnx(stageModel);
}

/** A weight onnxruntime reads from memory: the model's external-data references name it by `path`. */
export interface InMemoryWeight {
  path: string;
  data: Uint8Array;
}

/**
 * `stage` with `weights` bound, for a session in this process: every weight of EMBED_BELOW bytes or
 * more stays in its own buffer, referenced as external data in a file of its own that exists only in
 * memory (onnxruntime's `externalData` session option). The weights are not copied into the protobuf,
 * nothing is written to disk, and no protobuf size limit applies. Errors as buildStageModel's.
 */
export function buildStageModelInMemory(
  model: OnnxModel,
  plan: PipelinePlan,
  stage: number,
  weights: Map<string, StageWeight>,
  opts: Pick<BuildStageOptions, 'parameterNames' | 'uri'> = {},
): { onnx: Uint8Array; externalData: InMemoryWeight[] } {
  const { stageModel, bound } = bindWeights(model, plan, stage, weights, opts);
  const externalData: InMemoryWeight[] = [];
  stageModel.graph!.initializer = bound.map((t) => {
    if (!t.rawData || t.rawData.byteLength < EMBED_BELOW) return t;
    const path = `weights/${externalData.length}`;
    externalData.push({ path, data: t.rawData });
    return externalRef(t, path, 0);
  });
  return { onnx: serializeOnnx(stageModel), externalData };
}

/** `t` with its bytes replaced by a reference to `length` bytes at `offset` of external file `location`. */
function externalRef(t: TensorProto, location: string, offset: number): TensorProto {
  const { rawData, ...rest } = t;
  return {
    ...rest,
    dataLocation: 1,
    externalData: [
      { key: 'location', value: location },
      { key: 'offset', value: String(offset) },
      { key: 'length', value: String(rawData!.byteLength) },
    ],
  };
}

/** The stage's model with its initializers replaced by the bound weights (checked against the graph). */
function bindWeights(
  model: OnnxModel,
  plan: PipelinePlan,
  stage: number,
  weights: Map<string, StageWeight>,
  opts: Pick<BuildStageOptions, 'parameterNames' | 'uri'>,
): { stageModel: OnnxModel; bound: TensorProto[] } {
  const uri = opts.uri ?? 'model.onnx';
  const stageModel = extractStageModel(model, plan, stage);
  const graph = stageModel.graph!;
  const parameters = new Set(plan.stages[stage].parameters);

  // Initializer name -> checkpoint name of the weight that fills it.
  const source = new Map<string, string>();
  for (const checkpointName of weights.keys()) {
    const target = opts.parameterNames?.[checkpointName] ?? checkpointName;
    const other = source.get(target);
    if (other !== undefined) {
      throw new ShardserveError('WeightMismatch', `${uri}: checkpoint parameters '${other}' and '${checkpointName}' both map to initializer '${target}'; fix parameterNames`, { file: uri, param: target });
    }
    source.set(target, checkpointName);
  }

  const bound: TensorProto[] = [];
  for (const init of graph.initializer ?? []) {
    const name = init.name ?? '';
    const from = source.get(name);
    if (from === undefined) {
      if (parameters.has(name)) {
        const renamed = Object.entries(opts.parameterNames ?? {}).some(([, v]) => v === name);
        throw new ShardserveError('MissingWeight',
          `${uri}: no weight for initializer '${name}' of stage ${stage}: the rank's checkpoint slice has no parameter '${name}'${renamed ? ' (parameterNames maps one to it, but it is absent)' : ' and parameterNames maps none to it'}`,
          { file: uri, param: name });
      }
      if (init.dataLocation === 1) {
        throw new ShardserveError('MissingWeight', `${uri}: initializer '${name}' keeps its data in an external file of the source model and no checkpoint weight replaces it`, { file: uri, param: name });
      }
      bound.push(init);
      continue;
    }
    const w = weights.get(from)!;
    const wantType = dtypeOfOnnx(init.dataType);
    const wantShape = init.dims ?? [];
    const label = from === name ? `'${name}'` : `'${name}' (checkpoint '${from}')`;
    if (wantType !== w.dtype) {
      throw new ShardserveError('WeightMismatch', `${uri}: weight for initializer ${label} is ${w.dtype}, the graph expects ${wantType ?? onnxDataTypeName(init.dataType)}`, { file: uri, param: name });
    }
    if (!sameShape(w.shape, wantShape)) {
      throw new ShardserveError('WeightMismatch', `${uri}: weight for initializer ${label} has shape [${w.shape.join(', ')}], the graph expects [${wantShape.join(', ')}]`, { file: uri, param: name });
    }
    if (w.data.byteLength !== byteSize(w.dtype, w.shape)) {
      throw new ShardserveError('WeightMismatch', `${uri}: weight for initializer ${label} holds ${w.data.byteLength} bytes, expected ${byteSize(w.dtype, w.shape)} for ${w.dtype}[${w.shape.join(', ')}]`, { file: uri, param: name });
    }
    const t: TensorProto = { name, dims: [...w.shape], dataType: onnxDataType(w.dtype), rawData: w.data };
    if (init.docString) t.docString = init.docString;
    bound.push(t);
  }
  graph.initializer = bound;
  return { stageModel, bound };
}

/** Move every tensor of EMBED_BELOW bytes or more into one data file; returns the rewritten initializers. */
function writeExternalData(tensors: TensorProto[], dir: string, fileName: string): TensorProto[] {
  mkdirSync(dir, { recursive: true });
  const finalPath = join(dir, fileName);
  const tempPath = `${finalPath}.${process.pid}.tmp`;
  const fd = openSync(tempPath, 'w');
  const out: TensorProto[] = [];
  try {
    let offset = 0;
    for (const t of tensors) {
      if (!t.rawData || t.rawData.byteLength < EMBED_BELOW) {
        out.push(t);
        continue;
      }
      offset = Math.ceil(offset / ALIGN) * ALIGN;
      let written = 0;
      while (written < t.rawData.byteLength) {
        written += writeSync(fd, t.rawData, written, t.rawData.byteLength - written, offset + written);
      }
      out.push(externalRef(t, fileName, offset));
      offset += t.rawData.byteLength;
    }
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    rmSync(tempPath, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tempPath, finalPath);
  return out;
}

/**
 * The checkpoint names a stage's graph takes its weights from: its initializers, and the checkpoint
 * names the rename map sends to them. A rank loads only these (PlanInput.only): a training
 * checkpoint also holds optimizer states and counters (moments, global_step, ...).
 */
export function checkpointNamesFor(initializers: readonly string[], parameterNames: Record<string, string> = {}): Set<string> {
  const wanted = new Set(initializers);
  const names = new Set(initializers);
  for (const [name, initializer] of Object.entries(parameterNames)) if (wanted.has(initializer)) names.add(name);
  return names;
}
