/**
 * The resolved configuration one rank runs with: what the operator writes into the ConfigMap mounted
 * at $SHARDSERVE_CONFIG, and what `shardserve up` hands each local rank. JSON on disk.
 * The per-pod identity (rank, group, world size, peers) comes from the environment (DESIGN §5).
 */
export interface RankConfig {
  /** Name clients use in OIP requests (`/v2/models/<name>`); the resource name on Kubernetes. */
  modelName: string;
  model: {
    /** ONNX graph of the single-device network. */
    uri: string;
    /** Checkpoint parameter name -> graph initializer name (exact names). */
    parameterNames?: Record<string, string>;
    /** Optional explicit pipeline cut tensors (one list entry per boundary). */
    cutTensors?: string[];
  };
  checkpoint: {
    uri: string;
    strategy: string;
    format?: 'auto' | 'mindspore-ckpt' | 'safetensors';
    /** A file holding the key, 16, 24 or 32 bytes raw or in hex (a mounted Secret); never the key itself. */
    decryption?: { keyFile: string; mode: 'AES-GCM' | 'AES-CBC' | 'SM4-CBC' };
    /** A file in AWS credentials/env format (mounted Secret) for s3:// locations. */
    credentialsFile?: string;
  };
  parallelism: { pipelineStages: number; tensorParallel: number };
  serving: { grpcPort: number; httpPort: number; rankPort: number };
}
