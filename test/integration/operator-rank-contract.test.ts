// The pod contract (DESIGN §5) seen from both sides: what the operator's pure builders put into a
// rank pod (env, mounts, ConfigMap) is exactly what the rank process reads, and the peer addresses
// the rank derives are the stable DNS names the StatefulSet and headless Service give the pods.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { configMap, CONFIG_FILE, groupStatefulSet, headlessService, POD_INDEX_LABEL } from '../../operator/builders.js';
import { ResourceWrapper } from '../../operator/testing/wrappers.js';
import { peerAddress, readRankConfig, readRankEnv } from '../../runtime-image/rank-env.js';

type EnvVar = { name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } };

/** Resolve the downward-API env of one pod the way the kubelet would. */
function podEnv(sts: any, podIndex: number, namespace: string): NodeJS.ProcessEnv {
  const podName = `${sts.metadata.name}-${podIndex}`;
  const fields: Record<string, string> = {
    [`metadata.labels['${POD_INDEX_LABEL}']`]: String(podIndex),
    'metadata.name': podName,
    'metadata.namespace': namespace,
  };
  const env: NodeJS.ProcessEnv = {};
  for (const e of sts.spec.template.spec.containers[0].env as EnvVar[]) {
    const path = e.valueFrom?.fieldRef?.fieldPath;
    if (path !== undefined && !(path in fields)) throw new Error(`the test does not know field ${path}`);
    env[e.name] = path !== undefined ? fields[path] : e.value;
  }
  return env;
}

describe('operator → rank pod contract', () => {
  const resource = new ResourceWrapper('llm', 'team-a').layout(2, 1).replicas(2).decryption('ckpt-key', 'SM4-CBC').defaulted().obj;

  it.each([0, 1])('group %i: every rank reads its identity from the env the operator sets', (group) => {
    const sts = groupStatefulSet(resource, group);
    const ranks = [0, 1].map((i) => readRankEnv(podEnv(sts, i, 'team-a')));
    expect(ranks.map((r) => [r.rank, r.group, r.worldSize, r.pipelineStages, r.tensorParallel])).toEqual([
      [0, group, 2, 2, 1],
      [1, group, 2, 2, 1],
    ]);
  });

  it('peer addresses are the pods\' stable DNS names under the headless Service, on the rank port', () => {
    const sts = groupStatefulSet(resource, 1);
    const svc = headlessService(resource);
    expect(sts.spec.serviceName).toBe(svc.metadata.name);
    const env = podEnv(sts, 0, 'team-a');
    const rankPort = sts.spec.template.spec.containers[0].ports.find((p: { name: string }) => p.name === 'rank').containerPort;
    const addresses = [0, 1].map((k) => peerAddress(env.SHARDSERVE_PEERS!, k, 1, rankPort, env));
    expect(addresses).toEqual([0, 1].map((k) => `${sts.metadata.name}-${k}.${svc.metadata.name}.team-a.svc:${rankPort}`));
  });

  it('the ConfigMap is a rank configuration the rank accepts, mounted where SHARDSERVE_CONFIG points', async () => {
    const sts = groupStatefulSet(resource, 0);
    const env = podEnv(sts, 0, 'team-a');
    const container = sts.spec.template.spec.containers[0];
    const mountOf = (volume: string) => container.volumeMounts.find((m: { name: string }) => m.name === volume).mountPath;
    expect(env.SHARDSERVE_CONFIG).toBe(`${mountOf('config')}/${CONFIG_FILE}`);

    const dir = mkdtempSync(join(tmpdir(), 'contract-'));
    const path = join(dir, CONFIG_FILE);
    writeFileSync(path, configMap(resource).data[CONFIG_FILE]);
    const config = await readRankConfig(path);
    expect(config).toEqual({
      modelName: 'llm',
      model: { uri: 's3://models/net.onnx' },
      checkpoint: {
        uri: 's3://models/ckpt/',
        strategy: 's3://models/strategy/',
        format: 'auto',
        decryption: { keyFile: `${mountOf('decryption-key')}/key`, mode: 'SM4-CBC' },
      },
      parallelism: { pipelineStages: 2, tensorParallel: 1 },
      serving: { grpcPort: 8001, httpPort: 8000, rankPort: container.ports.find((p: { name: string }) => p.name === 'rank').containerPort },
    });
  });
});
