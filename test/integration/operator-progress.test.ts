// Load progress in status, end to end: a REAL rank process (`shardserve rank` with the pod
// environment, serving examples/) loads stage 0 of a 2-stage layout whose stage-1 peer does not
// exist, so it loads its whole slice but never becomes ready. The operator (against a real
// kube-apiserver + controller manager) reads the rank's /metrics and shows the progress per stage.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RankConfig } from '../../core/deployment.js';
import { GROUP, PLURAL, VERSION } from '../../operator/api/schema.js';
import type { DistributedInference } from '../../operator/api/types.js';
import type { Json, KubeApi } from '../../operator/kube.js';
import { parseLoadProgress } from '../../operator/load-progress.js';
import { jsonLogger } from '../../operator/logger.js';
import { defaultConfig, runOperator, type RunningOperator } from '../../operator/run.js';
import { resource } from '../../operator/testing/wrappers.js';
import { kubectl, startControlPlane, type ControlPlane } from '../harness/k8s/cluster.js';
import { adminApi, applyResource, diPath, eventually, listPods, newNamespace, setPodRunning } from '../harness/k8s/testing.js';
import { freePortBlock, freePorts } from '../harness/ports.js';

const repo = join(import.meta.dirname, '..', '..');
const examples = join(repo, 'examples');
let cp: ControlPlane;
let api: KubeApi;
let op: RunningOperator;
const ranks: ChildProcess[] = [];

const getDi = (ns: string, name: string): Promise<DistributedInference> => api.get(diPath(ns, name));
const readyCond = (d: DistributedInference) => d.status?.conditions?.find((c) => c.type === 'Ready');
const describeDi = (ns: string, name: string) => async () => JSON.stringify((await getDi(ns, name)).status, null, 1);

const create = (r: DistributedInference) => applyResource(cp, r);

/** Plays the kubelet: the rank container runs at `ip` but is not Ready (it is loading). */
const setPodLoading = (ns: string, name: string, ip: string) => setPodRunning(api, ns, name, ip, false);

async function rankPod0(ns: string, name: string): Promise<string> {
  return eventually(`rank pods of ${name}`, async () => {
    const pods: Json[] = await listPods(api, ns, `inference.shardserve.io/name=${name}`);
    return pods.length === 2 ? pods.map((p) => p.metadata.name as string).sort()[0] : undefined;
  }, 60_000);
}

/** `shardserve rank` as stage 0 of 2 on loopback, serving examples/; its stage-1 peer never exists. */
async function startStage0Rank(httpPort: number): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'operator-progress-'));
  const [grpcPort] = await freePorts(1);
  const rankPort = await freePortBlock(2); // rank 1 would listen on rankPort + 1: nobody does
  const config: RankConfig = {
    modelName: 'example',
    model: { uri: join(examples, 'model', 'net.onnx') },
    checkpoint: { uri: join(examples, 'checkpoint'), strategy: join(examples, 'strategy') },
    parallelism: { pipelineStages: 2, tensorParallel: 1 },
    serving: { grpcPort, httpPort, rankPort },
  };
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
  const child = spawn(process.execPath, [join(repo, 'bin', 'shardserve.mjs'), 'rank'], {
    env: {
      ...process.env,
      SHARDSERVE_RANK: '0', SHARDSERVE_GROUP: '0', SHARDSERVE_WORLD_SIZE: '2', SHARDSERVE_PIPELINE_STAGES: '2', SHARDSERVE_TENSOR_PARALLEL: '1',
      SHARDSERVE_PEERS: '127.0.0.1:{port}', SHARDSERVE_CONFIG: join(dir, 'config.json'), SHARDSERVE_BIND_HOST: '127.0.0.1',
      SHARDSERVE_TERMINATION_LOG: join(dir, 'termination-log'), TMPDIR: dir,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  ranks.push(child);
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  child.on('exit', (code) => {
    if (code !== null && code !== 0) output += `\n(exited with ${code})`;
  });
  // Wait until it answers /metrics at all (the load itself is not awaited here).
  await eventually('the rank to answer /metrics', async () => (await fetch(`http://127.0.0.1:${httpPort}/metrics`, { signal: AbortSignal.timeout(1000) })).ok, 60_000, async () => output);
}

/** What the rank itself says on /metrics (the same gauges the operator reads). */
async function rankMetrics(httpPort: number) {
  const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`, { signal: AbortSignal.timeout(2000) })).text();
  return parseLoadProgress(text);
}

const reconcileErrors = async () => (await op.metrics.registry.getSingleMetric('shardserve_operator_reconcile_errors_total')!.get()).values[0]?.value ?? 0;

beforeAll(async () => {
  cp = await startControlPlane();
  api = adminApi(cp);
  const r = kubectl(cp, ['apply', '--server-side', '-f', join(repo, 'crds')]);
  expect(r.code, r.stderr).toBe(0);
  expect(kubectl(cp, ['wait', '--for=condition=Established', `crd/${PLURAL}.${GROUP}`, '--timeout=60s']).code).toBe(0);
  op = await runOperator(
    { ...defaultConfig(), kubeconfig: cp.kubeconfigFor('shardserve-operator', ['system:masters']), listen: '127.0.0.1:0', leaderElection: false, resyncSeconds: 3600 },
    jsonLogger({ level: 'warn', write: () => {} }),
  );
}, 600_000);

afterAll(async () => {
  for (const c of ranks) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await op?.stop();
  api?.close();
  await cp?.stop();
});

describe('load progress in status, read from the ranks themselves', () => {
  it("a loading rank's real slice bytes show on its stage; progress refreshes with no API event (requeue)", async () => {
    const ns = await newNamespace(api, 'progress');
    const [httpPort] = await freePorts(1);
    await create(resource('llm', ns).layout(2, 1).spec({ serving: { httpPort } }).build());
    const pod0 = await rankPod0(ns, 'llm');
    expect(pod0).toBe('llm-g0-0');
    // The pod runs (as far as the API knows) before the rank process answers: progress unknown.
    await setPodLoading(ns, pod0, '127.0.0.1');
    const before = await eventually('LoadingRanks with rank 0 running', async () => {
      const d = await getDi(ns, 'llm');
      return readyCond(d)?.reason === 'LoadingRanks' ? d : undefined;
    }, 30_000, describeDi(ns, 'llm'));
    expect(before.status!.stages!.map((s) => [s.loadedBytes, s.totalBytes])).toEqual([[0, 0], [0, 0]]);

    // Now the rank starts and loads; nothing in the API changes from here on.
    await startStage0Rank(httpPort);
    const own = await eventually('the rank to finish loading its slice', async () => {
      const m = await rankMetrics(httpPort);
      return m && m.total > 0 && m.loaded === m.total ? m : undefined;
    }, 60_000);
    expect((await fetch(`http://127.0.0.1:${httpPort}/readyz`)).status).not.toBe(200); // its stage-1 peer never comes

    const d = await eventually('stage 0 fully loaded in status', async () => {
      const x = await getDi(ns, 'llm');
      return x.status?.stages?.[0]?.totalBytes ? x : undefined;
    }, 30_000, describeDi(ns, 'llm'));
    expect(d.status!.stages).toEqual([
      { stage: 0, ranks: 1, readyRanks: 0, loadedBytes: own.total, totalBytes: own.total },
      { stage: 1, ranks: 1, readyRanks: 0, loadedBytes: 0, totalBytes: 0 },
    ]);
    // Stage 0 of examples/: embed + block 0 of float32 weights (about half of the ~270 KiB).
    expect(own.total).toBeGreaterThan(50_000);
    expect(own.total).toBeLessThan(300_000);
    expect(readyCond(d)).toMatchObject({
      status: 'False',
      reason: 'LoadingRanks',
      message: `0/2 ranks ready; waiting for llm-g0-0, llm-g0-1 to load their slices and reach their peers; ${own.total} of ${own.total} bytes loaded by the ranks that report`,
    });
    expect(d.status!.readyRanks).toBe(0);
  }, 180_000);

  it('an unreachable metrics endpoint: progress stays unknown (0) and reconciles still succeed', async () => {
    const ns = await newNamespace(api, 'progress-unreachable');
    const [httpPort] = await freePorts(1); // nothing listens here
    const errorsBefore = await reconcileErrors();
    await create(resource('llm', ns).layout(2, 1).spec({ serving: { httpPort } }).build());
    const pod0 = await rankPod0(ns, 'llm');
    await setPodLoading(ns, pod0, '127.0.0.1');
    const d = await eventually('status after rank 0 runs', async () => {
      const x = await getDi(ns, 'llm');
      const p = (await api.get(`/api/v1/namespaces/${ns}/pods/${pod0}`)) as Json;
      // The status reflects the pod's Running state once the operator saw it.
      return p.status?.phase === 'Running' && readyCond(x)?.reason === 'LoadingRanks' ? x : undefined;
    }, 30_000, describeDi(ns, 'llm'));
    // Let a couple of requeued reconciles (every 5 s while a rank loads) run against the dead port.
    await new Promise((r) => setTimeout(r, 6_000));
    const after = await getDi(ns, 'llm');
    expect(after.status!.stages).toEqual([
      { stage: 0, ranks: 1, readyRanks: 0, loadedBytes: 0, totalBytes: 0 },
      { stage: 1, ranks: 1, readyRanks: 0, loadedBytes: 0, totalBytes: 0 },
    ]);
    expect(readyCond(after)).toMatchObject({ status: 'False', reason: 'LoadingRanks' });
    expect(after.status!.observedGeneration).toBe(d.status!.observedGeneration);
    expect(await reconcileErrors()).toBe(errorsBefore);
  }, 120_000);
});
