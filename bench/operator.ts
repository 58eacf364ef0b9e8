// `npm run bench:operator`: the operator (its own process, as deployed) against the local control
// plane. 200 DistributedInferences applied at once → time until each has its objects and a status;
// API writes per resource (from the API server's audit log); writes during 60 s of steady state
// (target 0); the operator's peak RSS (target ≤ 150 MB). Writes bench/results/operator.json.
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { GROUP, PLURAL, VERSION } from '../operator/api/schema.js';
import { resource } from '../operator/testing/wrappers.js';
import type { Json } from '../operator/kube.js';
import { auditedWrites, kubectl, startControlPlane } from '../test/harness/k8s/cluster.js';
import { adminApi, eventually, newNamespace } from '../test/harness/k8s/testing.js';

const N = Number(process.env.BENCH_RESOURCES ?? 200);
const STEADY_SECONDS = Number(process.env.BENCH_STEADY_SECONDS ?? 60);
const repo = join(import.meta.dirname, '..');
const USER = 'shardserve-operator';

const cp = await startControlPlane();
const api = adminApi(cp);
let child: ReturnType<typeof spawn> | undefined;
try {
  if (kubectl(cp, ['apply', '--server-side', '-f', join(repo, 'crds')]).code !== 0) throw new Error('could not apply the CRD');
  kubectl(cp, ['wait', '--for=condition=Established', `crd/${PLURAL}.${GROUP}`, '--timeout=60s']);
  const ns = await newNamespace(api, 'bench');
  const kubeconfig = cp.kubeconfigFor(USER, ['system:masters']);
  const port = 18000 + (process.pid % 1000);
  // Node's heap flags as the chart's Deployment sets them (values.yaml nodeOptions).
  const nodeOptions = '--max-semi-space-size=4 --max-old-space-size=128';
  child = spawn(process.execPath, [join(repo, 'bin', 'shardserve.mjs'), 'operator', '--kubeconfig', kubeconfig, `--listen=127.0.0.1:${port}`, '--leader-elect=false', '--workers=8', '--log-level=warn'], {
    stdio: ['ignore', 'inherit', 'inherit'],
    env: { ...process.env, NODE_OPTIONS: nodeOptions },
  });
  const pid = child.pid!;
  await eventually('operator ready', async () => (await fetch(`http://127.0.0.1:${port}/readyz`)).ok, 60_000);

  const rssMb = (field: 'VmRSS' | 'VmHWM') => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(new RegExp(`${field}:\\s+(\\d+)`))![1]) / 1024;
  const idleRss = rssMb('VmRSS');
  const t0 = Date.now();
  const since = new Date(t0).toISOString();
  const names = Array.from({ length: N }, (_, i) => `m${i}`);
  // Apply all at once (bounded concurrency of the client, not of the operator).
  for (let i = 0; i < N; i += 25) {
    await Promise.all(names.slice(i, i + 25).map((name) => {
      const r = resource(name, ns).build();
      delete r.metadata!.uid;
      delete r.metadata!.generation;
      return api.create(`/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}`, r);
    }));
  }
  const appliedMs = Date.now() - t0;
  const doneAt = new Map<string, number>();
  await eventually(`all ${N} resources with objects and status`, async () => {
    const [dis, sts] = await Promise.all([
      api.get(`/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}`),
      api.get(`/apis/apps/v1/namespaces/${ns}/statefulsets`),
    ]);
    const haveSts = new Set((sts.items as Json[]).map((s) => s.metadata.labels['inference.shardserve.io/name']));
    for (const d of dis.items as Json[]) {
      if (!doneAt.has(d.metadata.name) && d.status?.observedGeneration === 1 && haveSts.has(d.metadata.name)) doneAt.set(d.metadata.name, Date.now() - t0);
    }
    return doneAt.size === N;
  }, 600_000);
  const times = [...doneAt.values()].sort((a, b) => a - b);
  const pct = (p: number) => times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))];

  // Let pod creation by the controller manager settle, then count writes in a quiet window.
  const metric = async (name: string) => {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return text.split('\n').filter((l) => l.startsWith(name)).reduce((s, l) => s + Number(l.split(' ').pop()), 0);
  };
  // The controller manager keeps creating the 200 pods for a while; each changes a status once
  // (CreatingRanks → LoadingRanks). Steady state starts when every status reflects its pod.
  await eventually('every status reflects its pod', async () => {
    const dis = await api.get(`/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}`);
    return (dis.items as Json[]).every((d) => d.status?.conditions?.find((c: Json) => c.type === 'Ready')?.reason === 'LoadingRanks');
  }, 300_000);
  await eventually('queue drained', async () => (await metric('shardserve_operator_queue_depth')) === 0, 120_000);
  await new Promise((r) => setTimeout(r, 5000));
  const convergedWrites = auditedWrites(cp, USER, since);
  const steadyStart = new Date().toISOString();
  await new Promise((r) => setTimeout(r, STEADY_SECONDS * 1000));
  const steadyWrites = auditedWrites(cp, USER, steadyStart);
  const peakRss = rssMb('VmHWM');

  const byKind: Record<string, number> = {};
  for (const w of convergedWrites) {
    const res = w.uri.split('?')[0].split('/').filter(Boolean);
    const k = `${w.verb} ${res.includes('status') ? `${res[res.length - 3]}/status` : res[res.length - 2] === 'namespaces' ? res[res.length - 1] : res[res.length - 2]}`;
    byKind[k] = (byKind[k] ?? 0) + 1;
  }
  const result = {
    benchmark: 'operator',
    command: 'npm run bench:operator',
    resources: N,
    layout: '1 stage x 1 rank, 1 replica (one StatefulSet, one pod each)',
    applyAllMs: appliedMs,
    timeToObjectsAndStatusMs: { p50: pct(50), p90: pct(90), max: times[times.length - 1] },
    apiWritesTotal: convergedWrites.length,
    apiWritesPerResource: Number((convergedWrites.length / N).toFixed(2)),
    apiWritesByKind: byKind,
    steadyStateSeconds: STEADY_SECONDS,
    steadyStateWrites: steadyWrites.length,
    steadyStateWriteSample: steadyWrites.slice(0, 5),
    conflictedWrites: convergedWrites.filter((w) => w.code === 409).length,
    operatorRssMb: { idle: Number(idleRss.toFixed(1)), peak: Number(peakRss.toFixed(1)) },
    operatorNodeOptions: nodeOptions,
    targets: { steadyStateWrites: 0, peakRssMb: 150 },
    machine: { cpus: (await import('node:os')).cpus().length, node: process.version },
  };
  mkdirSync(join(repo, 'bench', 'results'), { recursive: true });
  const out = join(repo, 'bench', 'results', 'operator.json');
  writeFileSync(`${out}.tmp`, `${JSON.stringify(result, null, 2)}\n`);
  renameSync(`${out}.tmp`, out);
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
} finally {
  if (child && child.exitCode === null) {
    child.kill('SIGTERM');
    await new Promise((r) => child!.once('exit', r));
  }
  api.close();
  await cp.stop();
}
