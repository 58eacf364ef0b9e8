/**
 * Run ONNX models with onnxruntime-node: one model, or the stages of a pipeline one after another
 * (each stage fed the previous stage's outputs by name), as the rank processes do across the network.
 * Also the check that a built stage model loads and declares the inputs/outputs its plan promised.
 */
import ort from 'onnxruntime-node';
import { ShardserveError } from '../errors.js';
import type { PipelineStage } from './partition.js';

export type Feeds = Record<string, ort.Tensor>;

/** A model given as bytes (embedded weights) or a file path (needed when weights are in external data). */
export type ModelSource = Uint8Array | string;

export async function createSession(model: ModelSource, options: ort.InferenceSession.SessionOptions = {}): Promise<ort.InferenceSession> {
  return typeof model === 'string' ? ort.InferenceSession.create(model, options) : ort.InferenceSession.create(model, options);
}

export async function runModel(model: ModelSource, feeds: Feeds): Promise<Feeds> {
  const session = await createSession(model);
  try {
    return (await session.run(feeds)) as Feeds;
  } finally {
    await session.release();
  }
}

/** Run stage models in order; stage k gets exactly the tensors stage k-1 returned. */
export async function runStagesInSequence(models: ModelSource[], feeds: Feeds): Promise<Feeds> {
  let current = feeds;
  for (const model of models) current = await runModel(model, current);
  return current;
}

/** Load a stage model in onnxruntime and check its input and output names match the plan. */
export async function checkStageLoads(model: ModelSource, stage: PipelineStage, uri: string): Promise<void> {
  let session: ort.InferenceSession;
  try {
    session = await createSession(model);
  } catch (e) {
    throw new ShardserveError('OnnxInvalid', `${uri}: onnxruntime cannot load stage ${stage.stage}: ${(e as Error).message.split('\n')[0]}`, { file: uri, cause: e });
  }
  try {
    const want = (list: { name: string }[]) => list.map((t) => t.name).join(', ');
    if (want(stage.inputs) !== session.inputNames.join(', ') || want(stage.outputs) !== session.outputNames.join(', ')) {
      throw new ShardserveError('OnnxInvalid',
        `${uri}: stage ${stage.stage} loads with inputs [${session.inputNames.join(', ')}] -> [${session.outputNames.join(', ')}], the plan says [${want(stage.inputs)}] -> [${want(stage.outputs)}]`,
        { file: uri });
    }
  } finally {
    await session.release();
  }
}

/** Bytes of a tensor's data, for exact (bitwise) comparison. */
export function tensorBytes(t: ort.Tensor): Uint8Array {
  const data = t.data as ArrayBufferView;
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}
