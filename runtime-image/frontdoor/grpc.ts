import type { ServiceDefinition } from '@grpc/grpc-js';
import type { DataPlane, InferRequest } from '../dataplane.js';
import { InferError, asInferError, grpcCodeOf } from '../errors.js';
import type { Lifecycle } from '../lifecycle.js';
import type { RankMetrics } from '../metrics.js';
import { type CallContext, type Framed, framed, GrpcStatus, GrpcWireError, type MethodHandler } from '../grpc-h2.js';
import { frameInferResponse } from '../pipeline/codec.js';
import { services } from '../protos.js';
import { fromTypedContents, isOipDatatype, type Tensor } from '../tensor.js';

type Impl = (request: any, ctx: CallContext) => unknown;

/** An InferError (or anything thrown) as the gRPC status the client gets. */
function asWireError(e: unknown): GrpcWireError {
  if (e instanceof GrpcWireError) return e;
  const err = asInferError(e);
  return new GrpcWireError(grpcCodeOf(err.kind), err.message);
}

/**
 * The unary methods of a proto-loader service, on the grpc-h2 transport (paths and codecs from the
 * .proto); `encoders` replaces the reply codec of the methods it names.
 */
function unaryMethods(def: ServiceDefinition, impls: Record<string, Impl>, encoders: Record<string, (reply: any) => Framed> = {}): Record<string, MethodHandler> {
  return Object.fromEntries(Object.entries(impls).map(([name, impl]) => {
    const m = def[name] as any;
    const handler: MethodHandler = {
      kind: 'unary',
      decode: (b) => m.requestDeserialize(b),
      encodeFramed: encoders[name] ?? ((v) => framed(m.responseSerialize(v))),
      handle: async (request, ctx) => {
        try {
          return await impl(request, ctx);
        } catch (e) {
          throw asWireError(e);
        }
      },
    };
    return [m.path as string, handler];
  }));
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

/** inference.GRPCInferenceService over the data plane. */
export function oipMethods(plane: DataPlane, metrics?: RankMetrics): Record<string, MethodHandler> {
  return unaryMethods(services().oip.service, {
    ServerLive: () => ({ live: plane.live() }),
    ServerReady: () => ({ ready: plane.ready() }),
    ModelReady: (req) => ({ ready: plane.modelReady(req.name, req.version || undefined) }),
    ServerMetadata: () => plane.serverMetadata(),
    ModelMetadata: (req) => plane.modelMetadata(req.name, req.version || undefined),
    ModelInfer: async (req, ctx) => {
      const t0 = process.hrtime.bigint();
      try {
        const r = await plane.infer(inferRequestFromGrpc(req), { deadline: ctx.deadline, signal: ctx.signal });
        metrics?.requests.inc({ protocol: 'grpc', code: 'OK' });
        metrics?.requestSeconds.observe({ protocol: 'grpc' }, Number(process.hrtime.bigint() - t0) / 1e9);
        return {
          model_name: r.modelName,
          model_version: r.modelVersion,
          id: r.id,
          outputs: r.outputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape })),
          raw_output_contents: r.outputs.map((t) => Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength)),
        };
      } catch (e) {
        metrics?.requests.inc({ protocol: 'grpc', code: asInferError(e).kind });
        throw e;
      }
    },
    RepositoryModelLoad: () => {
      throw new InferError('Unimplemented', 'shardserve loads its model at start; there is no model repository to load from');
    },
    RepositoryModelUnload: () => {
      throw new InferError('Unimplemented', 'shardserve loads its model at start; there is no model repository to unload from');
    },
    // ModelInfer's reply through the hand codec: the same bytes, outputs not copied into the message.
  }, { ModelInfer: frameInferResponse });
}

const HEALTH_SERVICES = new Set(['', 'inference.GRPCInferenceService']);

/** grpc.health.v1.Health: SERVING exactly when the group is ready. */
export function healthMethods(lifecycle: Lifecycle): Record<string, MethodHandler> {
  const def = services().health.service as any;
  const statusOf = () => (lifecycle.accepting ? 'SERVING' : 'NOT_SERVING');
  return {
    ...unaryMethods(def, {
      Check: (req) => {
        if (!HEALTH_SERVICES.has(req.service)) throw new GrpcWireError(GrpcStatus.NOT_FOUND, `unknown service '${req.service}'`);
        return { status: statusOf() };
      },
    }),
    [def.Watch.path]: {
      kind: 'serverStream',
      decode: (b) => def.Watch.requestDeserialize(b),
      encodeFramed: (v) => framed(def.Watch.responseSerialize(v)),
      open: (req, call) => {
        const known = HEALTH_SERVICES.has(req.service);
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
    },
  };
}
