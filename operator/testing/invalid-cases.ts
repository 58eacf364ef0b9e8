// Invalid resources, each named by what it proves, with the field and the fix-it message both the
// API server (CEL / structural schema, at admission) and the local validator must report.
import type { DistributedInference } from '../api/types.js';
import { resource } from './wrappers.js';

export type InvalidCase = {
  name: string;
  resource: DistributedInference;
  field: string;
  /** Substring of the API server's message. */
  message: string;
  /** Substring of the local (ajv) message when it words a structural error differently. */
  localMessage?: string;
};

const URI = 'must be a URI like s3://bucket/key';
const r = (name = 'bad') => resource(name);
const without = (d: DistributedInference, path: string[]) => {
  let o = d as unknown as Record<string, Record<string, unknown>>;
  for (const p of path.slice(0, -1)) o = o[p] as unknown as Record<string, Record<string, unknown>>;
  delete o[path[path.length - 1]];
  return d;
};

export const invalidCases: InvalidCase[] = [
  { name: 'model uri is required', resource: without(r().build(), ['spec', 'model', 'uri']), field: 'spec.model.uri', message: 'Required value' },
  { name: 'strategy is required', resource: without(r().build(), ['spec', 'checkpoint', 'strategy']), field: 'spec.checkpoint.strategy', message: 'Required value' },
  { name: 'model uri may not contain spaces', resource: r().spec({ model: { uri: 's3://models/my net.onnx' } }).build(), field: 'spec.model.uri', message: URI },
  { name: 'model uri scheme must be s3, http(s) or file', resource: r().spec({ model: { uri: 'ftp://host/net.onnx' } }).build(), field: 'spec.model.uri', message: URI },
  { name: 'checkpoint uri may not be relative', resource: r().spec({ checkpoint: { uri: 'models/ckpt' } }).build(), field: 'spec.checkpoint.uri', message: URI },
  { name: 'strategy bucket names are lowercase', resource: r().spec({ checkpoint: { strategy: 's3://Models/strategy.ckpt' } }).build(), field: 'spec.checkpoint.strategy', message: URI },
  { name: 'format is one of auto, mindspore-ckpt, safetensors', resource: r().spec({ checkpoint: { format: 'zip' } }).build(), field: 'spec.checkpoint.format', message: 'supported values: "auto", "mindspore-ckpt", "safetensors"' },
  { name: 'decryption mode is one MindSpore supports', resource: r().spec({ checkpoint: { decryption: { secretName: 'k', mode: 'DES' } } }).build(), field: 'spec.checkpoint.decryption.mode', message: 'supported values: "AES-GCM", "AES-CBC", "SM4-CBC"' },
  { name: 'safetensors files cannot be decrypted', resource: r().spec({ checkpoint: { format: 'safetensors', decryption: { secretName: 'k' } } }).build(), field: 'spec.checkpoint', message: 'decryption applies to MindSpore .ckpt files only' },
  { name: 'credentials name a Secret', resource: r().spec({ checkpoint: { credentials: { secretName: 'My_Secret' } } }).build(), field: 'spec.checkpoint.credentials.secretName', message: 'must be a Secret name' },
  { name: 'pipeline stages are at least 1', resource: r().layout(0, 1).build(), field: 'spec.parallelism.pipelineStages', message: 'must be between 1 and 128' },
  { name: 'tensor parallel is at least 1', resource: r().layout(1, 0).build(), field: 'spec.parallelism.tensorParallel', message: 'must be between 1 and 64' },
  { name: 'tensor parallel is at most 64', resource: r().layout(1, 65).build(), field: 'spec.parallelism.tensorParallel', message: 'must be between 1 and 64' },
  { name: 'world size equals stages x tensor parallel', resource: r().spec({ parallelism: { pipelineStages: 2, tensorParallel: 2, worldSize: 6 } }).build(), field: 'spec.parallelism', message: 'worldSize must equal pipelineStages x tensorParallel' },
  { name: 'a group has at most 1024 ranks', resource: r().layout(128, 16).build(), field: 'spec.parallelism', message: 'must be at most 1024 ranks per group' },
  { name: 'replicas are not negative', resource: r().replicas(-1).build(), field: 'spec.replicas', message: 'must be between 0 and 256 groups' },
  { name: 'grpc and http ports differ', resource: r().spec({ serving: { grpcPort: 9000, httpPort: 9000 } }).build(), field: 'spec.serving', message: 'grpcPort and httpPort must differ' },
  { name: 'the rank port is reserved', resource: r().spec({ serving: { httpPort: 7000 } }).build(), field: 'spec.serving', message: 'port 7000 is the rank-to-rank port' },
  { name: 'ports fit in 16 bits', resource: r().spec({ serving: { grpcPort: 70000 } }).build(), field: 'spec.serving.grpcPort', message: 'should be less than or equal to 65535', localMessage: 'must be <= 65535' },
  { name: 'service type is a Service type', resource: r().spec({ serving: { serviceType: 'External' } }).build(), field: 'spec.serving.serviceType', message: 'supported values: "ClusterIP", "NodePort", "LoadBalancer"' },
  { name: 'SHARDSERVE_ variables are reserved', resource: r().spec({ runtime: { env: [{ name: 'SHARDSERVE_RANK', value: '3' }] } }).build(), field: 'spec.runtime.env', message: 'names starting with SHARDSERVE_ are set by the operator' },
  { name: 'env names are identifiers', resource: r().spec({ runtime: { env: [{ name: '1 BAD', value: 'x' }] } }).build(), field: 'spec.runtime.env[0].name', message: 'must be a C identifier-like environment variable name' },
  { name: 'cut tensors mark each stage boundary', resource: r().layout(3, 1).spec({ model: { cutTensors: ['h1'] } }).build(), field: 'spec', message: 'model.cutTensors must list exactly parallelism.pipelineStages - 1 tensors' },
  { name: 'names leave room for rank pod suffixes', resource: r('a-very-long-distributed-inference-name-xyz').build(), field: '', message: 'metadata.name must be at most 40 characters' },
  { name: 'model name is a DNS label', resource: r().spec({ modelName: 'Llama_70B' }).build(), field: 'spec.modelName', message: 'must be lowercase letters, digits and - (a DNS label)' },
  { name: 'load timeout is at least 30 s', resource: r().spec({ runtime: { loadTimeoutSeconds: 5 } }).build(), field: 'spec.runtime.loadTimeoutSeconds', message: 'must be between 30 and 86400 seconds' },
  { name: 'image pull policy is a Kubernetes policy', resource: r().spec({ runtime: { imagePullPolicy: 'Sometimes' } }).build(), field: 'spec.runtime.imagePullPolicy', message: 'supported values: "Always", "IfNotPresent", "Never"' },
  { name: 'misspelled fields are rejected', resource: r().spec({ parallelsm: { pipelineStages: 2 } }).build(), field: 'spec.parallelsm', message: 'unknown field "spec.parallelsm"', localMessage: 'unknown field' },
];
