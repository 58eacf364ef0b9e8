// A plain OIP gRPC client over our own proto, and helpers to start a pipeline group in-process.
import { credentials, type Client } from '@grpc/grpc-js';
import type { RankConfig } from '../../core/deployment.js';
import { services } from '../../runtime-image/protos.js';
import type { PipelineSpec } from '../../runtime-image/pipeline/spec.js';
import { startRank, type RankHandle, type RankOptions } from '../../runtime-image/rank.js';
import { freePortBlock, freePorts } from '../harness/ports.js';

export type OipClient = Client & Record<string, any>;

export function oipClient(address: string): OipClient {
  return new (services().oip)(address, credentials.createInsecure(), { 'grpc.max_send_message_length': 512 * 1024 * 1024 }) as any;
}

/** Promise form of a unary call; rejects with the gRPC error (code, details). */
export function call<T = any>(client: OipClient, method: string, request: unknown, deadlineMs = 10_000): Promise<T> {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + deadlineMs }, (err: any, res: T) => (err ? reject(err) : resolve(res)));
  });
}

export function testConfig(stages: number, ports: { grpc: number; http: number; rank: number }, modelName = 'net'): RankConfig {
  return {
    modelName,
    model: { uri: 'memory:model.onnx' },
    checkpoint: { uri: 'memory:ckpt', strategy: 'memory:strategy' },
    parallelism: { pipelineStages: stages, tensorParallel: 1 },
    serving: { grpcPort: ports.grpc, httpPort: ports.http, rankPort: ports.rank },
  };
}

export interface InProcessGroup {
  ranks: RankHandle[];
  grpcAddress: string;
  httpBase: string;
  stop(): Promise<void>;
}

/** Every rank of a group in this process, each with its own stage session and loopback ports. */
export async function startInProcessGroup(
  spec: PipelineSpec,
  stageModels: Uint8Array[],
  opts: Partial<RankOptions> & { modelName?: string; configOf?: (ports: { grpc: number; http: number; rank: number }) => RankConfig } = {},
): Promise<InProcessGroup> {
  const stages = stageModels.length;
  const rankBase = await freePortBlock(stages);
  const [grpc, http] = await freePorts(2);
  const ports = { grpc, http, rank: rankBase };
  const config = opts.configOf ? opts.configOf(ports) : testConfig(stages, ports, opts.modelName);
  const ranks: RankHandle[] = [];
  for (let r = 0; r < stages; r++) {
    ranks.push(await startRank({
      env: { rank: r, group: 0, worldSize: stages, pipelineStages: stages, tensorParallel: 1, peers: '127.0.0.1:{port}', configPath: 'memory' },
      config,
      bindHost: '127.0.0.1',
      httpPort: r === 0 ? http : 0,
      loader: async () => ({ spec, onnx: stageModels[r], sliceBytes: stageModels[r].byteLength }),
      ...opts,
    }));
  }
  await Promise.all(ranks.map((r) => r.loaded));
  const head = ranks[0];
  const until = Date.now() + 15_000;
  while (!head.plane!.ready()) {
    if (Date.now() > until) throw new Error(`group not ready after 15 s: ${head.plane!.lifecycle.reason}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return {
    ranks,
    grpcAddress: `127.0.0.1:${grpc}`,
    httpBase: `http://127.0.0.1:${http}`,
    stop: async () => {
      await Promise.all(ranks.map((r) => r.stop('test over', 2_000)));
    },
  };
}
