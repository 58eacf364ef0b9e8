// The operator against a real kube-apiserver + kube-controller-manager (StatefulSets make pods,
// the garbage collector deletes owned objects). The tests play the kubelet by writing pod status.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GROUP, PLURAL, VERSION } from '../../operator/api/schema.js';
import type { DistributedInference } from '../../operator/api/types.js';
import { FIELD_MANAGER, groupStatefulSet, revision } from '../../operator/builders.js';
import type { Json, KubeApi } from '../../operator/kube.js';
import { defaultConfig, runOperator, type RunningOperator } from '../../operator/run.js';
import { jsonLogger } from '../../operator/logger.js';
import { resource } from '../../operator/testing/wrappers.js';
import { auditedWrites, kubectl, startControlPlane, type ControlPlane } from '../harness/k8s/cluster.js';
import { adminApi, applyResource, diPath, eventually, getOrUndefined, listPods, newNamespace, setPodReady, setPodTerminated } from '../harness/k8s/testing.js';

const repo = join(import.meta.dirname, '..', '..');
const OPERATOR_USER = 'shardserve-operator';
let cp: ControlPlane;
let api: KubeApi;
let operatorKubeconfig: string;
let op: RunningOperator;

const quiet = jsonLogger({ level: 'warn', write: () => {} });
const startOperator = (over: Partial<ReturnType<typeof defaultConfig>> = {}) =>
  runOperator({ ...defaultConfig(), kubeconfig: operatorKubeconfig, listen: '127.0.0.1:0', leaderElection: false, resyncSeconds: 3600, ...over }, quiet);

const getDi = (ns: string, name: string): Promise<DistributedInference> => api.get(diPath(ns, name));
const cond = (d: DistributedInference, type: string) => d.status?.conditions?.find((c) => c.type === type);
const describeDi = (ns: string, name: string) => async () => JSON.stringify((await getDi(ns, name)).status, null, 1);

async function create(r: DistributedInference): Promise<DistributedInference> {
  applyResource(cp, r);
  return getDi(r.metadata!.namespace!, r.metadata!.name!);
}

async function podsOf(ns: string, name: string, n: number): Promise<Json[]> {
  return eventually(`${n} rank pods of ${name}`, async () => {
    const pods = (await listPods(api, ns, `inference.shardserve.io/name=${name}`)).filter((p) => !p.metadata.deletionTimestamp);
    return pods.length === n ? pods.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name)) : undefined;
  }, 60_000);
}

async function makeReady(ns: string, pods: Json[], base: number): Promise<void> {
  for (const [i, p] of pods.entries()) await setPodReady(api, ns, p.metadata.name, `10.1.${base}.${i + 1}`);
}

/** Health as GitOps tools compute it (sigs.k8s.io/cli-utils kstatus, built with the control plane). */
const kstatus = (obj: unknown): string => {
  const r = spawnSync(cp.bins.kstatus, [], { input: JSON.stringify(obj), encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`kstatus failed: ${r.stderr}`);
  return JSON.parse(r.stdout).status;
};

const sliceEndpoints = async (ns: string, name: string) =>
  ((await getOrUndefined(api, `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices/${name}-frontdoor`))?.endpoints ?? []).map((e: Json) => e.targetRef.name);

beforeAll(async () => {
  cp = await startControlPlane();
  api = adminApi(cp);
  const r = kubectl(cp, ['apply', '--server-side', '-f', join(repo, 'crds')]);
  expect(r.code, r.stderr).toBe(0);
  expect(kubectl(cp, ['wait', '--for=condition=Established', `crd/${PLURAL}.${GROUP}`, '--timeout=60s']).code).toBe(0);
  operatorKubeconfig = cp.kubeconfigFor(OPERATOR_USER, ['system:masters']);
  op = await startOperator();
});

afterAll(async () => {
  await op?.stop();
  api?.close();
  await cp?.stop();
});

describe('the operator against a real control plane', () => {
  it('creates exactly the owned objects, all owned by the resource and applied by one field manager', async () => {
    const ns = await newNamespace(api, 'owned-objects');
    const di = await create(resource('llm', ns).layout(2, 1).credentials('s3-creds').build());
    await eventually('status', async () => (await getDi(ns, 'llm')).status?.observedGeneration === 1, 30_000, describeDi(ns, 'llm'));
    const sel = `?labelSelector=${encodeURIComponent('inference.shardserve.io/name=llm')}`;
    // The endpointslice controller also makes slices for the headless Service (copying its labels): not ours.
    const names = async (path: string) =>
      ((await api.get(`${path}${sel}`)).items as Json[])
        .filter((o) => o.metadata.labels?.['endpointslice.kubernetes.io/managed-by'] !== 'endpointslice-controller.k8s.io')
        .map((o) => o.metadata.name)
        .sort();
    expect(await names(`/api/v1/namespaces/${ns}/configmaps`)).toEqual(['llm-config']);
    expect(await names(`/api/v1/namespaces/${ns}/services`)).toEqual(['llm', 'llm-ranks']);
    expect(await names(`/apis/apps/v1/namespaces/${ns}/statefulsets`)).toEqual(['llm-g0']);
    expect(await names(`/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`)).toEqual(['llm-frontdoor']);
    const sts = await api.get(`/apis/apps/v1/namespaces/${ns}/statefulsets/llm-g0`);
    expect(sts.metadata.ownerReferences).toEqual([{ apiVersion: `${GROUP}/${VERSION}`, kind: 'DistributedInference', name: 'llm', uid: di.metadata!.uid, controller: true, blockOwnerDeletion: true }]);
    // Spec and metadata have one manager; the controller manager only writes the status subresource.
    expect(sts.metadata.managedFields.filter((f: Json) => f.subresource !== 'status').map((f: Json) => [f.manager, f.operation])).toEqual([[FIELD_MANAGER, 'Apply']]);
    const want = groupStatefulSet(di, 0);
    expect(sts.spec.template.spec.containers[0].env).toEqual(want.spec.template.spec.containers[0].env);
    expect(sts.spec.podManagementPolicy).toBe('Parallel');
    const pods = await podsOf(ns, 'llm', 2);
    expect(pods.map((p) => [p.metadata.name, p.metadata.labels['apps.kubernetes.io/pod-index'], p.metadata.labels['inference.shardserve.io/revision']])).toEqual([
      ['llm-g0-0', '0', revision(di)],
      ['llm-g0-1', '1', revision(di)],
    ]);
  });

  it('reports readiness: status, conditions, the front door in the client Service, an event', async () => {
    const ns = await newNamespace(api, 'readiness');
    const di = await create(resource('llm', ns).layout(2, 1).build());
    const loading = await eventually('LoadingRanks', async () => {
      const d = await getDi(ns, 'llm');
      return cond(d, 'Ready')?.reason === 'LoadingRanks' ? d : undefined;
    }, 30_000, describeDi(ns, 'llm'));
    expect(kstatus(loading)).toBe('InProgress');
    await makeReady(ns, await podsOf(ns, 'llm', 2), 1);
    const ready = await eventually('Ready', async () => {
      const d = await getDi(ns, 'llm');
      return cond(d, 'Ready')?.status === 'True' ? d : undefined;
    }, 30_000, describeDi(ns, 'llm'));
    expect(ready.status).toMatchObject({
      observedGeneration: 1, revision: revision(di), replicas: 1, readyReplicas: 1, ranks: 2, readyRanks: 2,
      layout: { pipelineStages: 2, tensorParallel: 1, worldSize: 2 },
      stages: [{ stage: 0, ranks: 1, readyRanks: 1, loadedBytes: 0, totalBytes: 0 }, { stage: 1, ranks: 1, readyRanks: 1, loadedBytes: 0, totalBytes: 0 }],
      endpoint: `http://llm.${ns}.svc:8000`,
      selector: 'inference.shardserve.io/name=llm',
    });
    expect(ready.status!.conditions!.map((c) => [c.type, c.status, c.reason])).toEqual([
      ['Ready', 'True', 'AllGroupsReady'], ['Progressing', 'False', 'Complete'], ['Degraded', 'False', 'RanksHealthy'], ['Reconciling', 'False', 'Complete'], ['Stalled', 'False', 'NotStalled'],
    ]);
    expect(await sliceEndpoints(ns, 'llm')).toEqual(['llm-g0-0']);
    expect(kstatus(ready)).toBe('Current');
    await eventually('the Ready event', async () => (await api.get(`/api/v1/namespaces/${ns}/events`)).items.some((e: Json) => e.reason === 'AllGroupsReady' && e.involvedObject.name === 'llm'));
  });

  it("surfaces a rank's termination message as Degraded and takes its group out of service until it recovers", async () => {
    const ns = await newNamespace(api, 'degraded');
    await create(resource('llm', ns).layout(2, 1).build());
    const pods = await podsOf(ns, 'llm', 2);
    await makeReady(ns, pods, 2);
    await eventually('Ready', async () => cond(await getDi(ns, 'llm'), 'Ready')?.status === 'True');
    await setPodTerminated(api, ns, 'llm-g0-1', 1, 'strategy has 4 stages, spec asks for 2');
    const d = await eventually('Degraded', async () => {
      const x = await getDi(ns, 'llm');
      return cond(x, 'Degraded')?.status === 'True' ? x : undefined;
    }, 30_000, describeDi(ns, 'llm'));
    expect(cond(d, 'Degraded')!.message).toContain('rank 1 of group 0 (pod llm-g0-1) exited with code 1: strategy has 4 stages, spec asks for 2; fix the spec or the checkpoint');
    expect(cond(d, 'Ready')).toMatchObject({ status: 'False', reason: 'RankFailed' });
    expect(cond(d, 'Stalled')).toMatchObject({ status: 'True', reason: 'RankFailed' });
    expect(kstatus(d)).toBe('Failed');
    await eventually('the group out of service', async () => (await sliceEndpoints(ns, 'llm')).length === 0);
    const stalled = kubectl(cp, ['get', 'dinf', 'llm', '-n', ns, '-o', 'jsonpath={.status.conditions[?(@.type=="Stalled")].status}']);
    expect(stalled.stdout).toBe('True');
    await setPodReady(api, ns, 'llm-g0-1', '10.1.2.2');
    await eventually('recovered', async () => {
      const x = await getDi(ns, 'llm');
      return cond(x, 'Ready')?.status === 'True' && cond(x, 'Degraded')?.status === 'False';
    });
    expect(await sliceEndpoints(ns, 'llm')).toEqual(['llm-g0-0']);
  });

  it('rolls a spec change out one whole group at a time; a pipeline never mixes revisions', async () => {
    const ns = await newNamespace(api, 'rollout');
    const before = await create(resource('llm', ns).layout(2, 1).replicas(2).build());
    const oldRev = revision(before);
    await makeReady(ns, await podsOf(ns, 'llm', 4), 3);
    await eventually('Ready at the old revision', async () => cond(await getDi(ns, 'llm'), 'Ready')?.status === 'True');

    const after = await create(resource('llm', ns).layout(2, 1).replicas(2).image('shardserve/runtime:0.2.0').build());
    const newRev = revision(after);
    expect(newRev).not.toBe(oldRev);
    const revs = async () => Object.fromEntries((await listPods(api, ns, 'inference.shardserve.io/name=llm')).filter((p) => !p.metadata.deletionTimestamp).map((p) => [p.metadata.name, p.metadata.labels['inference.shardserve.io/revision']]));
    // Group 0 is replaced as a whole; group 1 keeps serving the old revision meanwhile.
    await eventually('group 0 recreated at the new revision', async () => {
      const r = await revs();
      return r['llm-g0-0'] === newRev && r['llm-g0-1'] === newRev;
    }, 60_000);
    expect(await revs()).toMatchObject({ 'llm-g1-0': oldRev, 'llm-g1-1': oldRev });
    expect(await sliceEndpoints(ns, 'llm')).toEqual(['llm-g1-0']);
    expect(cond(await getDi(ns, 'llm'), 'Ready')).toMatchObject({ status: 'False', reason: 'RollingOut' });

    await makeReady(ns, (await podsOf(ns, 'llm', 4)).filter((p) => p.metadata.name.startsWith('llm-g0-')), 4);
    await eventually('group 1 recreated once group 0 serves the new revision', async () => {
      const r = await revs();
      return r['llm-g1-0'] === newRev && r['llm-g1-1'] === newRev;
    }, 60_000);
    expect(await sliceEndpoints(ns, 'llm')).toEqual(['llm-g0-0']);
    await makeReady(ns, (await podsOf(ns, 'llm', 4)).filter((p) => p.metadata.name.startsWith('llm-g1-')), 5);
    const done = await eventually('Ready at the new revision', async () => {
      const d = await getDi(ns, 'llm');
      return cond(d, 'Ready')?.status === 'True' && d.status?.observedGeneration === 2 ? d : undefined;
    }, 30_000, describeDi(ns, 'llm'));
    expect(done.status).toMatchObject({ revision: newRev, readyReplicas: 2, readyRanks: 4 });
    expect(await sliceEndpoints(ns, 'llm')).toEqual(['llm-g0-0', 'llm-g1-0']);
  });

  it('scales whole groups through the scale subresource', async () => {
    const ns = await newNamespace(api, 'scale');
    await create(resource('llm', ns).layout(2, 1).build());
    await podsOf(ns, 'llm', 2);
    expect(kubectl(cp, ['scale', 'dinf', 'llm', '-n', ns, '--replicas=3']).code).toBe(0);
    await podsOf(ns, 'llm', 6);
    const stsNames = async () => ((await api.get(`/apis/apps/v1/namespaces/${ns}/statefulsets`)).items as Json[]).map((s) => s.metadata.name).sort();
    expect(await stsNames()).toEqual(['llm-g0', 'llm-g1', 'llm-g2']);
    await eventually('status.replicas 3', async () => (await getDi(ns, 'llm')).status?.replicas === 3);
    expect(kubectl(cp, ['scale', 'dinf', 'llm', '-n', ns, '--replicas=1']).code).toBe(0);
    await eventually('groups 1 and 2 removed', async () => JSON.stringify(await stsNames()) === '["llm-g0"]', 30_000);
    await podsOf(ns, 'llm', 2);
    await eventually('status.replicas 1', async () => (await getDi(ns, 'llm')).status?.replicas === 1);
  });

  it('deleting the resource garbage-collects every owned object', async () => {
    const ns = await newNamespace(api, 'gc');
    await create(resource('llm', ns).layout(2, 1).build());
    await podsOf(ns, 'llm', 2);
    expect(kubectl(cp, ['delete', 'dinf', 'llm', '-n', ns, '--wait=false']).code).toBe(0);
    const remaining = async () => {
      const sel = `?labelSelector=${encodeURIComponent('inference.shardserve.io/name=llm')}`;
      const paths = ['/api/v1/namespaces/NS/configmaps', '/api/v1/namespaces/NS/services', '/apis/apps/v1/namespaces/NS/statefulsets', '/apis/discovery.k8s.io/v1/namespaces/NS/endpointslices', '/api/v1/namespaces/NS/pods'];
      const counts = await Promise.all(paths.map(async (p) => (await api.get(p.replace('NS', ns) + sel)).items.length));
      return counts.reduce((a, b) => a + b, 0);
    };
    await eventually('everything owned is gone', async () => (await remaining()) === 0, 60_000);
  });

  it('after a restart: no duplicate objects and not a single write when nothing changed', async () => {
    const ns = await newNamespace(api, 'restart');
    await create(resource('llm', ns).layout(2, 1).build());
    await makeReady(ns, await podsOf(ns, 'llm', 2), 6);
    await eventually('Ready', async () => cond(await getDi(ns, 'llm'), 'Ready')?.status === 'True');
    await op.controller()!.idle();
    const snapshot = async () => {
      const sel = `?labelSelector=${encodeURIComponent('inference.shardserve.io/name=llm')}`;
      const lists = await Promise.all(['/api/v1/namespaces/NS/configmaps', '/api/v1/namespaces/NS/services', '/apis/apps/v1/namespaces/NS/statefulsets', '/apis/discovery.k8s.io/v1/namespaces/NS/endpointslices'].map((p) => api.get(p.replace('NS', ns) + sel)));
      const di = await getDi(ns, 'llm');
      // EndpointSlices that kube-controller-manager keeps for a Service (they inherit its labels) are
      // not the operator's: that controller may still update them after the group is Ready.
      const ours = (o: Json) => o.metadata.labels?.['endpointslice.kubernetes.io/managed-by'] !== 'endpointslice-controller.k8s.io';
      return [...lists.flatMap((l) => l.items.filter(ours).map((o: Json) => `${o.kind ?? ''}${o.metadata.name}@${o.metadata.resourceVersion}`)), `dinf@${di.metadata!.resourceVersion}`].sort();
    };
    const before = await snapshot();
    await op.stop();
    const since = new Date().toISOString();
    op = await startOperator();
    await eventually('caches synced', async () => op.controller()?.synced());
    await new Promise((r) => setTimeout(r, 3000));
    await op.controller()!.idle();
    expect(auditedWrites(cp, OPERATOR_USER, since)).toEqual([]);
    expect(await op.metrics.writeCount()).toBe(0);
    expect(await snapshot()).toEqual(before);
  });

  it('serves /healthz (informer health), /readyz and Prometheus /metrics', async () => {
    const base = `http://127.0.0.1:${op.port}`;
    const health = await (await fetch(`${base}/healthz`)).json();
    expect(health.ok).toBe(true);
    expect(health.informers.map((i: Json) => i.kind).sort()).toEqual(['ConfigMap', 'DistributedInference', 'EndpointSlice', 'Pod', 'Service', 'StatefulSet']);
    expect((await fetch(`${base}/readyz`)).status).toBe(200);
    const metrics = await (await fetch(`${base}/metrics`)).text();
    for (const name of ['shardserve_operator_reconcile_total', 'shardserve_operator_reconcile_errors_total', 'shardserve_operator_reconcile_duration_seconds_bucket', 'shardserve_operator_queue_depth', 'shardserve_operator_api_writes_total', 'shardserve_operator_leader 1']) {
      expect(metrics).toContain(name);
    }
  });

  it('watches only the namespaces it is given', async () => {
    const watched = await newNamespace(api, 'watched');
    const other = await newNamespace(api, 'not-watched');
    await op.stop();
    op = await startOperator({ namespaces: [watched] });
    try {
      await create(resource('llm', watched).build());
      await create(resource('llm', other).build());
      await eventually('status in the watched namespace', async () => (await getDi(watched, 'llm')).status?.observedGeneration === 1);
      await op.controller()!.idle();
      expect((await getDi(other, 'llm')).status).toBeUndefined();
      expect((await api.get(`/apis/apps/v1/namespaces/${other}/statefulsets`)).items).toEqual([]);
    } finally {
      await op.stop();
      op = await startOperator();
    }
  });

  it('two operator replicas elect exactly one leader; the standby takes over when it stops', async () => {
    const leaseNs = await newNamespace(api, 'leader-election');
    await op.stop();
    const cfg = { leaderElection: true, leaseNamespace: leaseNs, leaseName: 'shardserve-operator' };
    const a = await startOperator({ ...cfg, identity: 'replica-a' });
    const b = await startOperator({ ...cfg, identity: 'replica-b' });
    try {
      const leader = await eventually('one leader', async () => {
        const leaders = [a, b].filter((x) => x.leader!.isLeader);
        return leaders.length === 1 ? leaders[0] : undefined;
      }, 30_000);
      await new Promise((r) => setTimeout(r, 6000)); // more than a renew period: still exactly one
      expect([a, b].filter((x) => x.leader!.isLeader)).toEqual([leader]);
      const standby = leader === a ? b : a;
      expect(standby.controller()).toBeUndefined();
      const lease = await api.get(`/apis/coordination.k8s.io/v1/namespaces/${leaseNs}/leases/shardserve-operator`);
      expect(lease.spec.holderIdentity).toBe(leader === a ? 'replica-a' : 'replica-b');
      await leader.stop();
      await eventually('the standby leads', async () => standby.leader!.isLeader, 30_000);
      await eventually('the standby runs the controller', async () => standby.controller()?.synced());
    } finally {
      await a.stop();
      await b.stop();
      op = await startOperator();
    }
  });
});
