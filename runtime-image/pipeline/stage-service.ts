import { CancelSource } from '../cancel.js';
import { InferError, asInferError } from '../errors.js';
import type { Lifecycle } from '../lifecycle.js';
import { services } from '../protos.js';
import type { Tensor } from '../tensor.js';
import { decodeStageMessage, frameStageReply } from './codec.js';
import { framed, type MethodHandler, type ServerStreamCall } from '../grpc-h2.js';
import { FORWARD_PATH } from './stage-link.js';
import type { StageNode } from './stage-node.js';
import { errorToWire, tensorFromWire, tensorToWire } from './wire.js';

export const STATUS_PATH = '/shardserve.rank.v1.StageService/Status';

export interface RankStatus {
  rank: number;
  group: number;
  stage: number;
  loadedBytes: number;
  totalBytes: number;
  /** Own view: slice loaded, session built, next stage connected. */
  ready: boolean;
}

/**
 * The server side of rank-to-rank traffic: takes requests from the previous stage's stream, works on
 * many at once (the session serializes compute; sends to the next stage overlap with it), answers
 * each by id. A cancel message or the upstream going away aborts the request's remaining hops.
 */
export function stageServiceImpl(opts: {
  node: () => StageNode | undefined;
  lifecycle: Lifecycle;
  status: () => RankStatus;
  onRequest?: (delta: number) => void;
}): Record<string, MethodHandler> {
  // Status is rare: proto-loader's codec; Forward is the hot path: the hand codec.
  const status = (services().stageProtoLoader.service as any).Status;
  return {
    [FORWARD_PATH]: { kind: 'bidi', decode: decodeStageMessage, encodeFramed: frameStageReply, open: (call: ServerStreamCall<any, any>) => {
      const inflight = new Map<string, CancelSource>();
      let ended = false;
      const finishIfDone = () => {
        if (ended && inflight.size === 0) call.end();
      };
      call.on('data', (msg: any) => {
        const id = String(msg.id);
        if (msg.cancel) {
          inflight.get(id)?.abort();
          return;
        }
        const req = msg.request;
        if (!req) return;
        const controller = new CancelSource();
        inflight.set(id, controller);
        opts.onRequest?.(1);
        const deadline = Date.now() + Number(req.budget_us) / 1000;
        const work = async () => {
          const node = opts.node();
          if (!node || !opts.lifecycle.live) throw new InferError('Unavailable', `stage is ${opts.lifecycle.state.toLowerCase()}: ${opts.lifecycle.reason}`);
          const tensors = new Map<string, Tensor>();
          for (const w of req.tensors) tensors.set(w.name, tensorFromWire(w));
          return node.process(tensors, req.outputs ?? [], deadline, controller.signal);
        };
        const reply = (message: unknown) => {
          if (controller.signal.aborted) return; // the upstream gave up: nobody waits for it
          try {
            call.write(message);
          } catch {
            /* the upstream stream is gone */
          }
        };
        work().then(
          (r) => reply({ id, outputs: r.outputs.map(tensorToWire), timings: r.timings.map((t) => ({ stage: t.stage, compute_us: String(t.computeUs) })) }),
          (e) => reply({ id, error: errorToWire(asInferError(e)) }),
        ).finally(() => {
          inflight.delete(id);
          opts.onRequest?.(-1);
          finishIfDone();
        });
      });
      call.on('end', () => {
        ended = true;
        finishIfDone();
      });
      const abortAll = () => {
        for (const c of inflight.values()) c.abort();
      };
      call.on('cancelled', abortAll);
    } },
    [STATUS_PATH]: { kind: 'unary', decode: (b) => status.requestDeserialize(b), encodeFramed: (m) => framed(status.responseSerialize(m)), handle: () => {
      const s = opts.status();
      const l = opts.lifecycle.snapshot();
      return {
        rank: s.rank, group: s.group, stage: s.stage, state: l.state, reason: l.reason,
        loaded_bytes: String(s.loadedBytes), total_bytes: String(s.totalBytes), ready: s.ready,
      };
    } },
  };
}
