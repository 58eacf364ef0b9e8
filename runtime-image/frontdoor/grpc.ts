import { status as GrpcStatus, type ServerUnaryCall, type sendUnaryData, type ServerWritableStream, type UntypedServiceImplementation } from '@grpc/grpc-js';
import type { DataPlane, InferRequest } from '../dataplane.js';
import { InferError, asInferError, grpcCodeOf } from '../errors.js';
import type { Lifecycle } from '../lifecycle.js';
import type { RankMetrics } from '../metrics.js';
import { fromTypedContents, isOipDatatype, type Tensor } from '../tensor.js';

type Handler = (call: ServerUnaryCall<any, any>, callback: sendUnaryData<any>) => void;

/** Runs `fn` and answers with its value or the gRPC form of its InferError. */
function unary(fn: (call: ServerUnaryCall<any, any>) => unknown | Promise<unknown>): Handler {
  return (call, callback) => {
    Promise.resolve()
      .then(() => fn(call))
      .then(
        (value) => callback(null, value),
        (e) => {
          const err = asInferError(e);
          callback({ code: grpcCodeOf(err.kind), details: err.message });
        },
      );
  };
}

/** ModelInferRequest (decoded with keepCase, longs as strings) → the data plane's request. */
export function inferRequestFromGrpc(msg: any): InferRequest {
  const raw: Buffer[] = msg.raw_input_contents ?? [];
  if (raw.length > 0 && raw.length !== msg.inputs.length) {
    throw new InferError('InvalidArgument', `raw_input_contents has ${raw.length} entries for ${msg.inputs.length} inputs (one per input, same order)`);
  }
  const inputs: Tensor[] = msg.inputs.map((t: any, i: number): Tensor => {
    if (!isOipDatatype(t.datatype)) throw new InferError('InvalidArgument', `input '${t.name}': unsupported datatype '${t.datatype}'`);
    const shape = (t.shape as string[]).map(Number);
    const data = raw.length > 0 ? new Uint8Array(raw[i].buffer, raw[i].byteOffset, raw[i].byteLength) : fromTypedContents(t.name, t.datatype, shape, t.contents ?? {});
    return { name: t.name, datatype: t.datatype, shape, data };
  });
  return {
    modelName: msg.model_name,
    modelVersion: msg.model_version || undefined,
    id: msg.id || undefined,
    inputs,
    outputs: (msg.outputs ?? []).map((o: any) => o.name),
  };
}

function deadlineOf(call: ServerUnaryCall<any, any>): number | undefined {
  const d = call.getDeadline();
  const ms = d instanceof Date ? d.getTime() : Number(d);
  return Number.isFinite(ms) ? ms : undefined;
}

/** inference.GRPCInferenceService over the data plane. */
export function oipServiceImpl(plane: DataPlane, metrics?: RankMetrics): UntypedServiceImplementation {
  return {
    ServerLive: unary(() => ({ live: plane.live() })),
    ServerReady: unary(() => ({ ready: plane.ready() })),
    ModelReady: unary((call) => ({ ready: plane.modelReady(call.request.name, call.request.version || undefined) })),
    ServerMetadata: unary(() => plane.serverMetadata()),
    ModelMetadata: unary((call) => plane.modelMetadata(call.request.name, call.request.version || undefined)),
    ModelInfer: (call: ServerUnaryCall<any, any>, callback: sendUnaryData<any>) => {
      const t0 = process.hrtime.bigint();
      const controller = new AbortController();
      let answered = false;
      // grpc-js also reports 'cancelled' when a call closes after its answer: only a call still in flight is aborted.
      call.on('cancelled', () => {
        if (!answered) controller.abort();
      });
      Promise.resolve()
        .then(() => plane.infer(inferRequestFromGrpc(call.request), { deadline: deadlineOf(call), signal: controller.signal }))
        .then(
          (r) => {
            answered = true;
            metrics?.requests.inc({ protocol: 'grpc', code: 'OK' });
            metrics?.requestSeconds.observe({ protocol: 'grpc' }, Number(process.hrtime.bigint() - t0) / 1e9);
            callback(null, {
              model_name: r.modelName,
              model_version: r.modelVersion,
              id: r.id,
              outputs: r.outputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape })),
              raw_output_contents: r.outputs.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)),
            });
          },
          (e) => {
            answered = true;
            const err = asInferError(e);
            metrics?.requests.inc({ protocol: 'grpc', code: err.kind });
            callback({ code: grpcCodeOf(err.kind), details: err.message });
          },
        );
    },
    RepositoryModelLoad: unary(() => {
      throw new InferError('Unimplemented', 'shardserve loads its model at start; there is no model repository to load from');
    }),
    RepositoryModelUnload: unary(() => {
      throw new InferError('Unimplemented', 'shardserve loads its model at start; there is no model repository to unload from');
    }),
  };
}

const HEALTH_SERVICES = new Set(['', 'inference.GRPCInferenceService']);

/** grpc.health.v1.Health: SERVING exactly when the group is ready. */
export function healthServiceImpl(lifecycle: Lifecycle): UntypedServiceImplementation {
  const statusOf = () => (lifecycle.accepting ? 'SERVING' : 'NOT_SERVING');
  return {
    Check(call: ServerUnaryCall<any, any>, callback: sendUnaryData<any>) {
      if (!HEALTH_SERVICES.has(call.request.service)) {
        callback({ code: GrpcStatus.NOT_FOUND, details: `unknown service '${call.request.service}'` });
        return;
      }
      callback(null, { status: statusOf() });
    },
    Watch(call: ServerWritableStream<any, any>) {
      const known = HEALTH_SERVICES.has(call.request.service);
      let last = '';
      const send = () => {
        const s = known ? statusOf() : 'SERVICE_UNKNOWN';
        if (s !== last) call.write({ status: s });
        last = s;
      };
      send();
      lifecycle.on('change', send);
      call.on('cancelled', () => lifecycle.off('change', send));
    },
  };
}
