import { credentials } from '@grpc/grpc-js';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import * as ort from 'onnxruntime-node';
import { ShardserveError } from '../core/errors.js';
import { buildStageModel } from '../core/onnx/bind.js';
import { parseOnnx } from '../core/onnx/model.js';
import { loadDestinationSlice } from '../core/reshard/load.js';
import { loadStrategy } from '../core/reshard/session.js';
import { planFor } from './load-stage.js';
import { LocalGroup } from './local-group.js';
import { sessionOptions } from './pipeline/stage-session.js';
import { freePort, freePortRange } from './ports.js';
import { services } from './protos.js';
import { ortTypeOf, typedView, type OipDatatype } from './tensor.js';
import { upConfig } from './up.js';

export interface DemoResult {
  modelName: string;
  stages: number;
  inputName: string;
  outputName: string;
  prediction: number[];
  argmax: number;
  /** The pipeline's output equals single-device onnxruntime on the merged model, bit for bit. */
  bitwiseEqual: boolean;
  maxAbsDiff: number;
  latencyMs: number;
}

interface Example {
  modelName: string;
  model: string;
  checkpoint: string;
  strategy: string;
  sample: string;
  inference: { world: number; pipelineStages: number; tensorParallel: number };
}

function withDeadline<T>(p: Promise<T>, until: number, what: string): Promise<T> {
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      const t = setTimeout(() => reject(new ShardserveError('Timeout', `demo deadline passed while ${what}`)), Math.max(0, until - Date.now()));
      t.unref();
    }),
  ]);
}

/** Single-device onnxruntime on the merged model: every full tensor bound into the whole graph. */
async function mergedOutput(dir: string, ex: Example, feeds: Record<string, ort.Tensor>): Promise<Record<string, ort.Tensor>> {
  const modelUri = join(dir, ex.model);
  const model = parseOnnx(new Uint8Array(await readFile(modelUri)), modelUri);
  const strategy = await loadStrategy(join(dir, ex.strategy));
  const config = { modelName: ex.modelName, model: { uri: modelUri }, checkpoint: { uri: join(dir, ex.checkpoint), strategy: join(dir, ex.strategy) }, parallelism: { pipelineStages: 1, tensorParallel: 1 }, serving: { grpcPort: 0, httpPort: 0, rankPort: 0 } };
  const plan = planFor(model, strategy, config, 1);
  const full = await loadDestinationSlice({ checkpoint: config.checkpoint.uri, strategy: config.checkpoint.strategy, rank: 0 });
  const session = await ort.InferenceSession.create(buildStageModel(model, plan, 0, full.tensors, { uri: modelUri }), sessionOptions());
  try {
    return await session.run(feeds);
  } finally {
    await session.release();
  }
}

/**
 * `npm start`: serve examples/ on its inference layout with local ranks, send the sample request
 * through the OIP gRPC endpoint, and compare with single-device onnxruntime on the merged model.
 */
export async function runDemo(opts: { examplesDir: string; deadlineMs: number; log: (line: string) => void }): Promise<DemoResult> {
  const until = Date.now() + opts.deadlineMs;
  const dir = resolve(opts.examplesDir);
  const ex = JSON.parse(await readFile(join(dir, 'example.json'), 'utf8')) as Example;
  const sample = JSON.parse(await readFile(join(dir, ex.sample), 'utf8'));
  const input = sample.inputs[0] as { name: string; datatype: OipDatatype; shape: number[]; data: number[] };
  const [grpcPort, httpPort, rankPort] = [await freePort(), await freePort(), await freePortRange(ex.inference.world)];
  const config = await upConfig({
    model: join(dir, ex.model), checkpoint: join(dir, ex.checkpoint), strategy: join(dir, ex.strategy),
    stages: ex.inference.pipelineStages, tp: ex.inference.tensorParallel, world: ex.inference.world,
    grpcPort, httpPort, rankPort, modelName: ex.modelName,
  });
  opts.log(`demo: serving ${join(ex.model)} from ${ex.checkpoint}/ on ${config.parallelism.pipelineStages} pipeline stages as local ranks`);
  const group = new LocalGroup({ config, log: (l) => opts.log(`  ${l}`) });
  group.start();
  try {
    await withDeadline(group.waitReady(Math.max(0, until - Date.now())), until, 'waiting for the ranks to load');
    opts.log(`demo: all ${config.parallelism.pipelineStages} ranks ready; sending the sample request to OIP gRPC 127.0.0.1:${grpcPort}`);
    const values = new Float32Array(input.data);
    const client = new (services().oip)(`127.0.0.1:${grpcPort}`, credentials.createInsecure()) as any;
    const t0 = performance.now();
    const res: any = await new Promise((res_, rej) => client.ModelInfer({
      model_name: ex.modelName, id: 'demo-1',
      inputs: [{ name: input.name, datatype: input.datatype, shape: input.shape }],
      raw_input_contents: [Buffer.from(values.buffer)],
    }, { deadline: until }, (e: Error | null, r: unknown) => (e ? rej(e) : res_(r))));
    const latencyMs = performance.now() - t0;
    client.close();
    const out = res.outputs[0];
    const raw: Buffer = res.raw_output_contents[0];
    const prediction = Array.from(typedView(out.datatype, new Uint8Array(raw.buffer, raw.byteOffset, raw.byteLength)) as Float32Array);
    const reference = await withDeadline(mergedOutput(dir, ex, { [input.name]: new ort.Tensor(ortTypeOf(input.datatype), values, input.shape) }), until, 'computing the single-device reference');
    const ref = reference[out.name].data as Float32Array;
    const refBytes = Buffer.from(ref.buffer, ref.byteOffset, ref.byteLength);
    const maxAbsDiff = prediction.reduce((m, v, i) => Math.max(m, Math.abs(v - ref[i])), 0);
    return {
      modelName: ex.modelName,
      stages: config.parallelism.pipelineStages,
      inputName: input.name,
      outputName: out.name,
      prediction,
      argmax: prediction.indexOf(Math.max(...prediction)),
      bitwiseEqual: Buffer.compare(raw, refBytes) === 0,
      maxAbsDiff,
      latencyMs,
    };
  } finally {
    await group.stop(5_000);
  }
}
