import { readFile } from 'node:fs/promises';
import type { RankConfig } from '../core/deployment.js';
import { ShardserveError } from '../core/errors.js';

/** A rank's identity from the pod environment (DESIGN §5). */
export interface RankEnv {
  rank: number;
  group: number;
  worldSize: number;
  pipelineStages: number;
  tensorParallel: number;
  /** e.g. `{name}-{rank}.{service}.{namespace}.svc:7000`, locally `127.0.0.1:{port}`. */
  peers: string;
  configPath: string;
}

function intVar(env: NodeJS.ProcessEnv, name: string, min: number, fallback?: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') {
    if (fallback !== undefined) return fallback;
    throw new ShardserveError('Usage', `${name} is not set (expected an integer ≥ ${min})`, { param: name });
  }
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min) throw new ShardserveError('Usage', `${name}='${raw}' is not an integer ≥ ${min}`, { param: name });
  return n;
}

export function readRankEnv(env: NodeJS.ProcessEnv): RankEnv {
  const worldSize = intVar(env, 'SHARDSERVE_WORLD_SIZE', 1);
  const pipelineStages = intVar(env, 'SHARDSERVE_PIPELINE_STAGES', 1, worldSize);
  const tensorParallel = intVar(env, 'SHARDSERVE_TENSOR_PARALLEL', 1, 1);
  const rank = intVar(env, 'SHARDSERVE_RANK', 0);
  const group = intVar(env, 'SHARDSERVE_GROUP', 0, 0);
  const peers = env.SHARDSERVE_PEERS ?? '';
  const configPath = env.SHARDSERVE_CONFIG ?? '';
  if (!configPath) throw new ShardserveError('Usage', 'SHARDSERVE_CONFIG is not set (expected the path of the rank configuration JSON)', { param: 'SHARDSERVE_CONFIG' });
  if (pipelineStages * tensorParallel !== worldSize) {
    throw new ShardserveError('Usage', `SHARDSERVE_WORLD_SIZE=${worldSize} must equal SHARDSERVE_PIPELINE_STAGES (${pipelineStages}) × SHARDSERVE_TENSOR_PARALLEL (${tensorParallel})`, { param: 'SHARDSERVE_WORLD_SIZE' });
  }
  if (rank >= worldSize) throw new ShardserveError('Usage', `SHARDSERVE_RANK=${rank} is outside the world of ${worldSize} ranks`, { param: 'SHARDSERVE_RANK' });
  if (tensorParallel !== 1) {
    throw new ShardserveError('Unsupported', `SHARDSERVE_TENSOR_PARALLEL=${tensorParallel}: tensor-parallel stages are not supported yet (expected 1)`, { param: 'SHARDSERVE_TENSOR_PARALLEL' });
  }
  if (worldSize > 1 && !peers) throw new ShardserveError('Usage', 'SHARDSERVE_PEERS is not set (expected a template such as 127.0.0.1:{port} or {name}-{rank}.{service}.{namespace}.svc:7000)', { param: 'SHARDSERVE_PEERS' });
  return { rank, group, worldSize, pipelineStages, tensorParallel, peers: peers || '127.0.0.1:{port}', configPath };
}

/**
 * Address of rank k. `{rank}`, `{group}` and `{port}` (= rankPort + k, so local ranks on one host get
 * distinct ports) are filled here; any other `{x}` comes from SHARDSERVE_X in the environment.
 */
export function peerAddress(template: string, rank: number, group: number, rankPort: number, env: NodeJS.ProcessEnv = process.env): string {
  return template.replace(/\{([a-z_]+)\}/gi, (_, key: string) => {
    if (key === 'rank') return String(rank);
    if (key === 'group') return String(group);
    if (key === 'port') return String(rankPort + rank);
    const v = env[`SHARDSERVE_${key.toUpperCase()}`];
    if (v === undefined) throw new ShardserveError('Usage', `SHARDSERVE_PEERS: placeholder {${key}} has no value (set SHARDSERVE_${key.toUpperCase()})`, { param: 'SHARDSERVE_PEERS' });
    return v;
  });
}

export async function readRankConfig(path: string): Promise<RankConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    throw new ShardserveError('NotFound', `${path}: cannot read the rank configuration (${(e as Error).message})`, { file: path, cause: e });
  }
  let c: any;
  try {
    c = JSON.parse(text);
  } catch (e) {
    throw new ShardserveError('BadConfig', `${path}: not valid JSON (${(e as Error).message})`, { file: path, cause: e });
  }
  const need = (ok: boolean, field: string, what: string) => {
    if (!ok) throw new ShardserveError('BadConfig', `${path}: field '${field}' ${what}`, { file: path, param: field });
  };
  need(typeof c?.modelName === 'string' && c.modelName.length > 0, 'modelName', 'must be a non-empty string');
  need(typeof c?.model?.uri === 'string', 'model.uri', 'must be the ONNX model location');
  need(typeof c?.checkpoint?.uri === 'string', 'checkpoint.uri', 'must be the checkpoint location');
  need(typeof c?.checkpoint?.strategy === 'string', 'checkpoint.strategy', 'must be the strategy location');
  need(Number.isInteger(c?.parallelism?.pipelineStages) && c.parallelism.pipelineStages >= 1, 'parallelism.pipelineStages', 'must be an integer ≥ 1');
  need(Number.isInteger(c?.parallelism?.tensorParallel) && c.parallelism.tensorParallel >= 1, 'parallelism.tensorParallel', 'must be an integer ≥ 1');
  for (const p of ['grpcPort', 'httpPort', 'rankPort']) need(Number.isInteger(c?.serving?.[p]) && c.serving[p] >= 0 && c.serving[p] < 65536, `serving.${p}`, 'must be a port number');
  return c as RankConfig;
}
