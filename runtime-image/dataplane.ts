import { CancelSource, type CancelSignal } from './cancel.js';
import { InferError, asInferError } from './errors.js';
import type { Lifecycle } from './lifecycle.js';
import type { RankMetrics } from './metrics.js';
import type { PipelineSpec } from './pipeline/spec.js';
import type { StageNode } from './pipeline/stage-node.js';
import { byteLengthOf, type Tensor, type TensorMeta } from './tensor.js';

export const SERVER_NAME = 'shardserve';
export const SERVER_VERSION = '0.1.0';
export const MODEL_VERSION = '1';
export const MODEL_PLATFORM = 'onnxruntime_onnx';

export interface InferRequest {
  modelName: string;
  modelVersion?: string;
  id?: string;
  inputs: Tensor[];
  /** Output names asked for; empty = every output. */
  outputs: string[];
}

export interface InferResponse {
  modelName: string;
  modelVersion: string;
  id: string;
  outputs: Tensor[];
}

export interface ModelMetadata {
  name: string;
  versions: string[];
  platform: string;
  inputs: TensorMeta[];
  outputs: TensorMeta[];
}

export interface DataPlaneLimits {
  /** Bytes of tensor data one request may carry. */
  maxMessageBytes: number;
  /** Deadline of a request that brings none. */
  defaultTimeoutMs: number;
  /** Requests in flight at the front door at most; more get ResourceExhausted. */
  maxInflight: number;
}

export const DEFAULT_LIMITS: DataPlaneLimits = { maxMessageBytes: 64 * 1024 * 1024, defaultTimeoutMs: 30_000, maxInflight: 256 };

/**
 * The Open Inference Protocol, transport-neutral: the gRPC servicer and the REST handler are thin
 * translations over this. Every failure is an InferError whose kind the transports map to codes.
 */
export class DataPlane {
  private inflightCount = 0;
  private drainWaiters: Array<() => void> = [];
  readonly limits: DataPlaneLimits;

  constructor(
    private readonly modelName: string,
    /** Known once the stage is loaded (`attach`); until then metadata and infer answer Unavailable. */
    private spec: PipelineSpec | undefined,
    /** Group readiness: READY only when every stage is loaded and reachable. */
    readonly lifecycle: Lifecycle,
    private readonly head: () => StageNode | undefined,
    private readonly metrics?: RankMetrics,
    limits: Partial<DataPlaneLimits> = {},
  ) {
    this.limits = { ...DEFAULT_LIMITS, ...limits };
  }

  /** The loaded pipeline: from now on metadata and inference are answered. */
  attach(spec: PipelineSpec): void {
    this.spec = spec;
  }

  private loadedSpec(): PipelineSpec {
    if (!this.spec) throw new InferError('Unavailable', `model '${this.modelName}' is still loading (${this.lifecycle.reason})`);
    return this.spec;
  }

  get inflight(): number {
    return this.inflightCount;
  }

  live(): boolean {
    return this.lifecycle.live;
  }

  ready(): boolean {
    return this.lifecycle.accepting;
  }

  serverMetadata() {
    return { name: SERVER_NAME, version: SERVER_VERSION, extensions: ['binary_tensor_data', 'health', 'metrics'] };
  }

  /** NotFound unless this server serves `name` (and `version`, when given). */
  checkModel(name: string, version?: string): void {
    if (name !== this.modelName) {
      throw new InferError('NotFound', `model '${name}' is not served here (this server serves '${this.modelName}')`);
    }
    if (version && version !== MODEL_VERSION) {
      throw new InferError('NotFound', `model '${name}' has no version '${version}' (versions: ${MODEL_VERSION})`);
    }
  }

  modelReady(name: string, version?: string): boolean {
    this.checkModel(name, version);
    return this.ready();
  }

  modelMetadata(name: string, version?: string): ModelMetadata {
    this.checkModel(name, version);
    const spec = this.loadedSpec();
    return { name: this.modelName, versions: [MODEL_VERSION], platform: MODEL_PLATFORM, inputs: spec.modelInputs, outputs: spec.modelOutputs };
  }

  /** Checks the request against the model's inputs and outputs; the message says what was expected. */
  validate(req: InferRequest): void {
    this.checkModel(req.modelName, req.modelVersion);
    const spec = this.loadedSpec();
    const expected = new Map(spec.modelInputs.map((m) => [m.name, m]));
    const seen = new Set<string>();
    let bytes = 0;
    for (const t of req.inputs) {
      const m = expected.get(t.name);
      if (!m) {
        throw new InferError('InvalidArgument', `unexpected input '${t.name}' for model '${this.modelName}' (expected inputs: ${[...expected.keys()].join(', ')})`);
      }
      if (seen.has(t.name)) throw new InferError('InvalidArgument', `input '${t.name}' is given twice`);
      seen.add(t.name);
      if (t.datatype !== m.datatype) {
        throw new InferError('InvalidArgument', `input '${t.name}': datatype ${t.datatype} does not match the model's ${m.datatype}`);
      }
      const shapeOk = t.shape.length === m.shape.length && t.shape.every((d, i) => Number.isInteger(d) && d >= 0 && (m.shape[i] < 0 || m.shape[i] === d));
      if (!shapeOk) {
        throw new InferError('InvalidArgument', `input '${t.name}': shape [${t.shape.join(',')}] does not match the model's [${m.shape.join(',')}] (-1 = any size)`);
      }
      const want = byteLengthOf(t.datatype, t.shape);
      if (t.data.byteLength !== want) {
        throw new InferError('InvalidArgument', `input '${t.name}': ${t.data.byteLength} bytes of data, shape [${t.shape.join(',')}] of ${t.datatype} needs ${want}`);
      }
      bytes += want;
    }
    const missing = [...expected.keys()].filter((n) => !seen.has(n));
    if (missing.length > 0) throw new InferError('InvalidArgument', `missing input(s) ${missing.map((n) => `'${n}'`).join(', ')} for model '${this.modelName}'`);
    if (bytes > this.limits.maxMessageBytes) {
      throw new InferError('InvalidArgument', `request carries ${bytes} bytes of tensor data, over the limit of ${this.limits.maxMessageBytes} bytes`);
    }
    const outputs = new Set(spec.modelOutputs.map((o) => o.name));
    for (const o of req.outputs) {
      if (!outputs.has(o)) throw new InferError('InvalidArgument', `unknown output '${o}' requested (model outputs: ${[...outputs].join(', ')})`);
    }
  }

  /** Runs one request through the whole pipeline. `deadline` is epoch ms. */
  async infer(req: InferRequest, ctx: { deadline?: number; signal?: CancelSignal } = {}): Promise<InferResponse> {
    this.validate(req);
    if (!this.lifecycle.accepting) {
      throw new InferError('Unavailable', `model '${this.modelName}' is not ready: ${this.lifecycle.state.toLowerCase()} (${this.lifecycle.reason})`);
    }
    const head = this.head();
    if (!head) throw new InferError('Unavailable', `model '${this.modelName}' is not loaded yet`);
    if (this.inflightCount >= this.limits.maxInflight) {
      throw new InferError('ResourceExhausted', `${this.inflightCount} requests already in flight (limit ${this.limits.maxInflight}); retry later`);
    }
    const deadline = ctx.deadline ?? Date.now() + this.limits.defaultTimeoutMs;
    this.inflightCount++;
    this.metrics?.inflight.inc();
    const controller = new CancelSource();
    const onAbort = () => controller.abort();
    ctx.signal?.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    try {
      const tensors = new Map(req.inputs.map((t) => [t.name, t]));
      // The deadline holds even when a stage is stuck in compute: the race answers on time.
      const overdue = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          controller.abort();
          reject(new InferError('DeadlineExceeded', `request '${req.id ?? ''}' passed its deadline`));
        }, Math.max(0, deadline - Date.now()));
      });
      const result = await Promise.race([head.process(tensors, req.outputs, deadline, controller.signal), overdue]);
      return { modelName: this.modelName, modelVersion: MODEL_VERSION, id: req.id ?? '', outputs: result.outputs };
    } catch (e) {
      throw asInferError(e);
    } finally {
      clearTimeout(timer);
      ctx.signal?.removeEventListener('abort', onAbort);
      this.inflightCount--;
      this.metrics?.inflight.dec();
      if (this.inflightCount === 0) for (const w of this.drainWaiters.splice(0)) w();
    }
  }

  /** Stop taking work and wait (at most `timeoutMs`) for the requests in flight to finish. */
  async drain(reason: string, timeoutMs: number): Promise<boolean> {
    this.lifecycle.set('DRAINING', reason);
    if (this.inflightCount === 0) return true;
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.drainWaiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }
}
