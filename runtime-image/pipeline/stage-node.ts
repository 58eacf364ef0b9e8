import type { CancelSignal } from '../cancel.js';
import { InferError } from '../errors.js';
import type { RankMetrics } from '../metrics.js';
import type { Tensor } from '../tensor.js';
import type { StageExecutor } from './stage-session.js';
import { carriedAfter, type PipelineSpec } from './spec.js';
import type { StageLink, StageResult } from './stage-link.js';

/**
 * One stage's work for one request: run this stage's session on what reached it, then hand what the
 * later stages need to the next stage (or, at the last stage, pick the model outputs).
 */
export class StageNode {
  private readonly carried: string[];
  private readonly isLast: boolean;

  constructor(
    readonly stage: number,
    private readonly spec: PipelineSpec,
    private readonly executor: StageExecutor,
    private readonly next: StageLink | undefined,
    private readonly metrics?: RankMetrics,
  ) {
    this.isLast = stage === spec.stages.length - 1;
    this.carried = this.isLast ? [] : carriedAfter(spec, stage);
    if (!this.isLast && !next) throw new Error(`stage ${stage} of ${spec.stages.length} needs a link to stage ${stage + 1}`);
  }

  /** True when the stage can take work: its session exists and its next stage is connected. */
  get downstreamConnected(): boolean {
    return this.isLast || !!this.next?.connected;
  }

  async process(tensors: Map<string, Tensor>, requested: string[], deadline: number, signal?: CancelSignal): Promise<StageResult> {
    checkAlive(deadline, signal, this.stage);
    // Fail fast: a request must not spend compute when its next hop is known to be gone.
    if (!this.isLast && !this.next!.connected) {
      throw new InferError('Unavailable', `stage ${this.stage + 1} is unreachable`);
    }
    const t0 = process.hrtime.bigint();
    const produced = await this.executor.run(tensors, signal);
    const computeUs = Number((process.hrtime.bigint() - t0) / 1000n);
    this.metrics?.stageSeconds.observe({ stage: String(this.stage) }, computeUs / 1e6);
    checkAlive(deadline, signal, this.stage);
    for (const [name, t] of produced) tensors.set(name, t);
    const timing = { stage: this.stage, computeUs };
    if (this.isLast) {
      const names = requested.length > 0 ? requested : this.spec.modelOutputs.map((o) => o.name);
      const outputs = names.map((n) => {
        const t = tensors.get(n);
        if (!t) throw new InferError('Internal', `model output '${n}' was not produced by the pipeline`);
        return t;
      });
      return { outputs, timings: [timing] };
    }
    const carry = this.carried.map((n) => {
      const t = tensors.get(n);
      if (!t) throw new InferError('Internal', `tensor '${n}' needed after stage ${this.stage} is missing`);
      return t;
    });
    const h0 = process.hrtime.bigint();
    const result = await this.next!.send(carry, requested, deadline, signal);
    this.metrics?.hopSeconds.observe({ to_stage: String(this.stage + 1) }, Number(process.hrtime.bigint() - h0) / 1e9);
    return { outputs: result.outputs, timings: [timing, ...result.timings] };
  }
}

export function checkAlive(deadline: number, signal: CancelSignal | undefined, stage: number): void {
  if (signal?.aborted) throw new InferError('Cancelled', 'request cancelled');
  if (Date.now() > deadline) throw new InferError('DeadlineExceeded', `deadline passed at stage ${stage}`);
}
