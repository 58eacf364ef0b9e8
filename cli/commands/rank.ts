import type { Command } from '../main.js';

export const rankCommand: Command = {
  name: 'rank',
  summary: 'run one rank, configured by the pod environment (the container entrypoint)',
  usage: `Usage: shardserve rank

Runs one rank of a pipeline group: loads only its slice of the checkpoint, builds its stage's
onnxruntime session, connects to the next stage and serves. Rank 0 also serves the Open Inference
Protocol (gRPC on serving.grpcPort, REST on serving.httpPort). Configured by the environment:

  SHARDSERVE_RANK, SHARDSERVE_GROUP                       this rank and its replica group
  SHARDSERVE_WORLD_SIZE, SHARDSERVE_PIPELINE_STAGES,
  SHARDSERVE_TENSOR_PARALLEL                              the inference layout (tensor parallel: 1 for now)
  SHARDSERVE_PEERS                                        address template of rank k, e.g.
                                                          {name}-{rank}.{service}.{namespace}.svc:7000
                                                          or 127.0.0.1:{port} ({port} = rankPort + k)
  SHARDSERVE_CONFIG                                       path of the rank configuration JSON
  SHARDSERVE_BIND_HOST (default 0.0.0.0), SHARDSERVE_HTTP_PORT, SHARDSERVE_GRPC_PORT (overrides),
  SHARDSERVE_DRAIN_SECONDS (default 30)

SIGTERM drains: no new requests, requests in flight finish, then exit 0. A fatal error is written
to /dev/termination-log (when it exists) and exits 1.
`,
  // Loaded when it runs: the other commands do not load the runtime (onnxruntime, gRPC).
  run: async () => (await import('../../runtime-image/serve-rank.js')).serveRank(),
};
