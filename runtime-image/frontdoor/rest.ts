import type { IncomingMessage, ServerResponse } from 'node:http';
import { CancelSource } from '../cancel.js';
import type { DataPlane, InferRequest, InferResponse } from '../dataplane.js';
import { InferError, asInferError, httpStatusOf } from '../errors.js';
import type { Lifecycle } from '../lifecycle.js';
import type { RankMetrics } from '../metrics.js';
import { byteLengthOf, fromJsonData, isOipDatatype, jsonDataText, type Tensor } from '../tensor.js';

const HEADER_LENGTH = 'inference-header-content-length';
// JSON framing on top of the tensor bytes a request may carry.
const JSON_OVERHEAD = 1024 * 1024;

export interface RestOptions {
  /** The front door (rank 0 only); other ranks serve health and metrics alone. */
  plane?: DataPlane;
  /** This rank's own lifecycle (for /healthz and /readyz on ranks without a front door too). */
  lifecycle: Lifecycle;
  metrics?: RankMetrics;
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function sendError(res: ServerResponse, e: unknown): void {
  const err = asInferError(e);
  send(res, httpStatusOf(err.kind), { error: err.message });
}

async function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? NaN);
  if (declared > limit) throw new InferError('InvalidArgument', `request body of ${declared} bytes is over the limit of ${limit} bytes`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new InferError('InvalidArgument', `request body is over the limit of ${limit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** OIP REST JSON (with the binary tensor data extension) → the data plane's request. */
export function inferRequestFromRest(modelName: string, modelVersion: string | undefined, body: Buffer, headerLength?: number): { request: InferRequest; binaryOutputs: (name: string) => boolean } {
  const jsonEnd = headerLength ?? body.length;
  if (!Number.isInteger(jsonEnd) || jsonEnd < 0 || jsonEnd > body.length) {
    throw new InferError('InvalidArgument', `Inference-Header-Content-Length ${headerLength} is outside the ${body.length}-byte body`);
  }
  let doc: any;
  try {
    doc = JSON.parse(body.subarray(0, jsonEnd).toString('utf8'));
  } catch (e) {
    throw new InferError('InvalidArgument', `request body is not valid JSON: ${(e as Error).message}`);
  }
  if (!doc || typeof doc !== 'object' || !Array.isArray(doc.inputs)) {
    throw new InferError('InvalidArgument', 'request JSON must be an object with an "inputs" array');
  }
  let offset = jsonEnd;
  const inputs: Tensor[] = doc.inputs.map((t: any, i: number): Tensor => {
    if (!t || typeof t.name !== 'string') throw new InferError('InvalidArgument', `inputs[${i}] has no "name"`);
    if (typeof t.datatype !== 'string' || !isOipDatatype(t.datatype)) throw new InferError('InvalidArgument', `input '${t.name}': unsupported or missing datatype '${t.datatype}'`);
    if (!Array.isArray(t.shape) || !t.shape.every((d: unknown) => Number.isInteger(d) && (d as number) >= 0)) {
      throw new InferError('InvalidArgument', `input '${t.name}': "shape" must be an array of non-negative integers`);
    }
    const binarySize = t.parameters?.binary_data_size;
    let data: Uint8Array;
    if (binarySize !== undefined) {
      if (!Number.isInteger(binarySize) || binarySize < 0 || offset + binarySize > body.length) {
        throw new InferError('InvalidArgument', `input '${t.name}': binary_data_size ${binarySize} runs past the end of the body`);
      }
      data = new Uint8Array(body.buffer, body.byteOffset + offset, binarySize);
      offset += binarySize;
    } else {
      if (t.data === undefined) throw new InferError('InvalidArgument', `input '${t.name}' has neither "data" nor binary_data_size`);
      data = fromJsonData(t.name, t.datatype, t.shape, t.data);
    }
    return { name: t.name, datatype: t.datatype, shape: t.shape, data };
  });
  if (doc.outputs !== undefined && !Array.isArray(doc.outputs)) throw new InferError('InvalidArgument', '"outputs" must be an array');
  const outputs: any[] = doc.outputs ?? [];
  const allBinary = doc.parameters?.binary_data_output === true;
  const binaryByName = new Map(outputs.map((o) => [o?.name, o?.parameters?.binary_data]));
  return {
    request: { modelName, modelVersion, id: typeof doc.id === 'string' ? doc.id : undefined, inputs, outputs: outputs.map((o) => String(o?.name)) },
    binaryOutputs: (name) => binaryByName.get(name) ?? allBinary,
  };
}

function sendInferResponse(res: ServerResponse, r: InferResponse, binary: (name: string) => boolean): void {
  const blobs: Uint8Array[] = [];
  // Written by hand around each output's data so 64-bit integers keep every digit (see jsonDataText).
  const outputs = r.outputs.map((t) => {
    const base = { name: t.name, datatype: t.datatype, shape: t.shape };
    if (binary(t.name)) {
      blobs.push(t.data);
      return JSON.stringify({ ...base, parameters: { binary_data_size: byteLengthOf(t.datatype, t.shape) } });
    }
    return `${JSON.stringify(base).slice(0, -1)},"data":${jsonDataText(t)}}`;
  });
  const head = JSON.stringify({ model_name: r.modelName, model_version: r.modelVersion, id: r.id });
  const json = Buffer.from(`${head.slice(0, -1)},"outputs":[${outputs.join(',')}]}`);
  if (blobs.length === 0) {
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': json.length });
    res.end(json);
    return;
  }
  const total = json.length + blobs.reduce((n, b) => n + b.byteLength, 0);
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': total, [HEADER_LENGTH]: json.length });
  res.write(json);
  for (const b of blobs) res.write(b);
  res.end();
}

/** `/v2/models/<name>[/versions/<v>][/<action>]` */
const MODEL_PATH = /^\/v2\/models\/([^/]+)(?:\/versions\/([^/]+))?(?:\/(ready|infer))?\/?$/;

/** The OIP REST routes plus /healthz, /readyz and /metrics, as one node:http request handler. */
export function restHandler(opts: RestOptions) {
  const { lifecycle, metrics } = opts;
  return async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const path = url.pathname;
    try {
      const plane = opts.plane;
      if (req.method === 'GET') {
        if (path === '/healthz' || (plane && path === '/v2/health/live')) {
          const live = path === '/healthz' ? lifecycle.live : plane!.live();
          return send(res, live ? 200 : 503, path === '/healthz' ? { status: lifecycle.state, reason: lifecycle.reason } : { live });
        }
        if (path === '/readyz' || (plane && path === '/v2/health/ready')) {
          const group = plane?.lifecycle ?? lifecycle;
          const ready = group.accepting;
          return send(res, ready ? 200 : 503, path === '/readyz' ? { ready, status: group.state, reason: group.reason } : { ready });
        }
        if (path === '/metrics') {
          const text = metrics ? await metrics.registry.metrics() : '';
          res.writeHead(200, { 'content-type': metrics?.registry.contentType ?? 'text/plain' });
          res.end(text);
          return;
        }
        if (plane && (path === '/v2' || path === '/v2/')) return send(res, 200, plane.serverMetadata());
      }
      if (!plane && path.startsWith('/v2')) throw new InferError('NotFound', `this rank does not host the front door: send inference requests to rank 0`);
      const m = MODEL_PATH.exec(path);
      if (m && plane) {
        const name = decodeURIComponent(m[1]);
        const version = m[2] ? decodeURIComponent(m[2]) : undefined;
        if (req.method === 'GET' && !m[3]) return send(res, 200, plane.modelMetadata(name, version));
        if (req.method === 'GET' && m[3] === 'ready') {
          const ready = plane.modelReady(name, version);
          return send(res, ready ? 200 : 503, { name, ready });
        }
        if (req.method === 'POST' && m[3] === 'infer') return await infer(plane, req, res, name, version);
      }
      throw new InferError('NotFound', `no route for ${req.method} ${path}`);
    } catch (e) {
      if (!res.headersSent) sendError(res, e);
      else res.destroy();
    }
  };

  async function infer(plane: DataPlane, req: IncomingMessage, res: ServerResponse, name: string, version: string | undefined): Promise<void> {
    const t0 = process.hrtime.bigint();
    const controller = new CancelSource();
    res.on('close', () => {
      if (!res.writableFinished) controller.abort();
    });
    try {
      plane.checkModel(name, version); // before the body: a request for another model is answered without reading it
      const body = await readBody(req, plane.limits.maxMessageBytes + JSON_OVERHEAD);
      const header = req.headers[HEADER_LENGTH];
      const { request, binaryOutputs } = inferRequestFromRest(name, version, body, header === undefined ? undefined : Number(header));
      const r = await plane.infer(request, { signal: controller.signal });
      metrics?.requests.inc({ protocol: 'http', code: 'OK' });
      metrics?.requestSeconds.observe({ protocol: 'http' }, Number(process.hrtime.bigint() - t0) / 1e9);
      sendInferResponse(res, r, binaryOutputs);
    } catch (e) {
      const err = asInferError(e);
      metrics?.requests.inc({ protocol: 'http', code: err.kind });
      // Stop reading a body we refused, and close that connection: the client learns at once.
      if (err.kind === 'InvalidArgument' && !req.complete) res.setHeader('connection', 'close');
      throw err;
    }
  }
}
