import * as ort from 'onnxruntime-node';
import type { InMemoryWeight } from '../../core/onnx/bind.js';
import type { CancelSignal } from '../cancel.js';
import { InferError } from '../errors.js';
import { oipOfOrtType, ortTypeOf, typedView, type Tensor, type TensorMeta } from '../tensor.js';

/** The part of the network one rank runs. ORT today; a tensor-parallel shard group later. */
export interface StageExecutor {
  readonly inputs: TensorMeta[];
  readonly outputs: TensorMeta[];
  /** Runs when its turn comes, unless `signal` was aborted while it waited (then rejects, no compute). */
  run(inputs: Map<string, Tensor>, signal?: CancelSignal): Promise<Map<string, Tensor>>;
  close(): Promise<void>;
}

export type GraphOptimization = 'disabled' | 'basic' | 'extended' | 'all';

export interface OrtStageOptions {
  /**
   * 'basic' by default: its rewrites keep the arithmetic of MatMul/Add/... unchanged, so a cut graph
   * computes bit for bit what the whole graph computes (fusions across a cut would not).
   */
  graphOptimization?: GraphOptimization;
  intraOpThreads?: number;
}

export function sessionOptions(opts: OrtStageOptions = {}): ort.InferenceSession.SessionOptions {
  return {
    graphOptimizationLevel: opts.graphOptimization ?? 'basic',
    intraOpNumThreads: opts.intraOpThreads ?? 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    // No spin-waiting after a run: a stage is one of several processes sharing a machine's cores
    // (the other stages, the front door, the client), and a spinning thread takes a core from them.
    extra: { session: { intra_op: { allow_spinning: '0' }, inter_op: { allow_spinning: '0' } } },
  };
}

function metaOf(m: ort.InferenceSession.ValueMetadata): TensorMeta {
  if (!m.isTensor) throw new InferError('Unimplemented', `graph value '${m.name}' is not a tensor; only tensors are served`);
  return { name: m.name, datatype: oipOfOrtType(m.type), shape: m.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : -1)) };
}

export function toOrtTensor(t: Tensor): ort.Tensor {
  return new ort.Tensor(ortTypeOf(t.datatype), typedView(t.datatype, t.data) as any, t.shape);
}

export function fromOrtTensor(name: string, v: ort.Tensor): Tensor {
  const data = v.data as unknown as ArrayBufferView;
  // No copy: onnxruntime-node allocates fresh output buffers on every run (no preallocated outputs here).
  return { name, datatype: oipOfOrtType(v.type), shape: [...v.dims], data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

/**
 * One onnxruntime session; runs are serialized (one stage = one device's worth of compute).
 * `externalData`: the in-memory files the model's external-data references name (onnxruntime copies
 * them while creating the session).
 */
export async function createOrtStage(onnx: Uint8Array, opts: OrtStageOptions = {}, externalData?: InMemoryWeight[]): Promise<StageExecutor> {
  const options = externalData?.length ? { ...sessionOptions(opts), externalData } : sessionOptions(opts);
  const session = await ort.InferenceSession.create(onnx, options);
  const inputs = session.inputMetadata.map(metaOf);
  const outputs = session.outputMetadata.map(metaOf);
  let queue: Promise<unknown> = Promise.resolve();
  return {
    inputs,
    outputs,
    run(feeds, signal) {
      const job = queue.then(async () => {
        // A request whose deadline passed (or that was cancelled) while queued costs no compute.
        if (signal?.aborted) throw new InferError('Cancelled', 'request cancelled before its turn on the stage');
        const ortFeeds: Record<string, ort.Tensor> = {};
        for (const m of inputs) {
          const t = feeds.get(m.name);
          if (!t) throw new InferError('Internal', `stage input '${m.name}' did not reach this stage`);
          ortFeeds[m.name] = toOrtTensor(t);
        }
        const result = await session.run(ortFeeds);
        const out = new Map<string, Tensor>();
        for (const m of outputs) out.set(m.name, fromOrtTensor(m.name, result[m.name] as ort.Tensor));
        return out;
      });
      queue = job.catch(() => undefined);
      return job;
    },
    async close() {
      await queue;
      await session.release();
    },
  };
}
