// The CRD, the Helm chart and its RBAC against a real kube-apiserver (built once from its Go
// module; see test/harness/k8s). Fails loudly when the binaries cannot be built.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { PLURAL, GROUP } from '../../operator/api/schema.js';
import type { KubeApi } from '../../operator/kube.js';
import { invalidCases } from '../../operator/testing/invalid-cases.js';
import { resource } from '../../operator/testing/wrappers.js';
import { K8S_VERSION } from '../harness/k8s/binaries.js';
import { kubectl, startControlPlane, type ControlPlane } from '../harness/k8s/cluster.js';
import { adminApi, applyYaml, eventually, newNamespace } from '../harness/k8s/testing.js';

const repo = join(import.meta.dirname, '..', '..');
const CRD_NAME = `${PLURAL}.${GROUP}`;
let cp: ControlPlane;
let api: KubeApi;

const helm = (args: string[], input?: string) => {
  const r = spawnSync(cp.bins.helm, [...args, '--kubeconfig', cp.kubeconfig], {
    encoding: 'utf8',
    input,
    timeout: 120_000,
    env: { ...process.env, HELM_CACHE_HOME: join(cp.dir, 'helm-cache'), HELM_CONFIG_HOME: join(cp.dir, 'helm-config'), HELM_DATA_HOME: join(cp.dir, 'helm-data') },
  });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
};

beforeAll(async () => {
  cp = await startControlPlane();
  api = adminApi(cp);
  const r = kubectl(cp, ['apply', '--server-side', '-f', join(repo, 'crds')]);
  expect(r.stderr).toBe('');
  expect(kubectl(cp, ['wait', '--for=condition=Established', `crd/${CRD_NAME}`, '--timeout=60s']).code).toBe(0);
});

afterAll(async () => {
  api?.close();
  await cp?.stop();
});

describe('the CRD (kubectl apply -f crds/)', () => {
  it('kubectl explain reads the field documentation', async () => {
    // Discovery of a just-established CRD can lag a moment behind the Established condition.
    const p = await eventually('kubectl explain', async () => {
      const r = kubectl(cp, ['explain', 'dinf.spec.parallelism']);
      return r.code === 0 ? r : undefined;
    }, 30_000);
    const text = p.stdout.replace(/\s+/g, ' '); // kubectl wraps long descriptions
    expect(text).toContain('The inference layout of one replica group: worldSize = pipelineStages x tensorParallel ranks.');
    expect(text).toContain("Pipeline stages; must equal the training strategy's stage count when greater than 1.");
    const mode = kubectl(cp, ['explain', 'distributedinferences.spec.checkpoint.decryption.mode']);
    expect(mode.stdout.replace(/\s+/g, ' ')).toContain('Cipher the checkpoint was saved with (MindSpore enc_mode).');
  });

  it('is reachable by its short name and the shardserve category', async () => {
    const ns = await newNamespace(api, 'short-name');
    expect(applyYaml(cp, stringify(resource('one', ns).forApply())).code).toBe(0);
    expect(kubectl(cp, ['get', 'dinf', '-n', ns, '-o', 'name']).stdout.trim()).toBe(`distributedinference.${GROUP}/one`);
    expect(kubectl(cp, ['get', 'shardserve', '-n', ns, '-o', 'name']).stdout.trim()).toBe(`distributedinference.${GROUP}/one`);
  });

  it('stores exactly the defaults the local validator fills in', async () => {
    const ns = await newNamespace(api, 'defaults');
    expect(applyYaml(cp, stringify(resource('defaults', ns).forApply())).code).toBe(0);
    const stored = await api.get(`/apis/${GROUP}/v1alpha1/namespaces/${ns}/${PLURAL}/defaults`);
    expect(stored.spec).toEqual(resource('defaults', ns).defaulted().build().spec);
  });

  it.each(invalidCases.map((c) => [c.name, c] as const))('rejects at admission: %s', async (name, c) => {
    const ns = await newNamespace(api, `invalid-${name}`);
    const obj = structuredClone(c.resource);
    obj.metadata!.namespace = ns;
    delete obj.metadata!.uid;
    delete obj.metadata!.generation;
    const r = applyYaml(cp, stringify(obj));
    expect(r.code, r.stdout).not.toBe(0);
    expect(r.stderr).toContain(c.message);
    if (c.field) expect(r.stderr).toContain(c.field);
    expect(kubectl(cp, ['get', 'dinf', '-n', ns, '-o', 'name']).stdout.trim()).toBe('');
  });

  it('rejects renaming the model once set, with a message that says what to do', async () => {
    const ns = await newNamespace(api, 'immutable-model-name');
    expect(applyYaml(cp, stringify(resource('m', ns).spec({ modelName: 'llama' }).forApply())).code).toBe(0);
    const r = applyYaml(cp, stringify(resource('m', ns).spec({ modelName: 'other' }).forApply()));
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain('spec.modelName: Invalid value: "other": is immutable: clients address the model by this name; create a new DistributedInference to rename it');
  });

  it('rejects changing the format of files at an unchanged location, allows it with a new location', async () => {
    const ns = await newNamespace(api, 'format-transition');
    expect(applyYaml(cp, stringify(resource('f', ns).spec({ checkpoint: { format: 'safetensors' } }).forApply())).code).toBe(0);
    const same = applyYaml(cp, stringify(resource('f', ns).spec({ checkpoint: { format: 'mindspore-ckpt' } }).forApply()));
    expect(same.stderr).toContain('format can only change together with uri');
    const moved = applyYaml(cp, stringify(resource('f', ns).spec({ checkpoint: { format: 'mindspore-ckpt', uri: 's3://models/ckpt-v2/' } }).forApply()));
    expect(moved.code, moved.stderr).toBe(0);
  });

  it('prints Ready ranks, Stages, Endpoint and Age columns', async () => {
    const ns = await newNamespace(api, 'columns');
    expect(applyYaml(cp, stringify(resource('cols', ns).layout(2, 1).forApply())).code).toBe(0);
    const header = kubectl(cp, ['get', 'dinf', 'cols', '-n', ns]).stdout.split('\n')[0];
    expect(header.split(/\s{2,}/)).toEqual(['NAME', 'READY', 'READY RANKS', 'RANKS', 'STAGES', 'ENDPOINT', 'AGE']);
    expect(kubectl(cp, ['get', 'dinf', 'cols', '-n', ns, '-o', 'custom-columns=STAGES:.spec.parallelism.pipelineStages', '--no-headers']).stdout.trim()).toBe('2');
  });

  it('has a scale subresource driving spec.replicas (for an HPA)', async () => {
    const ns = await newNamespace(api, 'scale');
    expect(applyYaml(cp, stringify(resource('s', ns).forApply())).code).toBe(0);
    const r = kubectl(cp, ['scale', 'dinf', 's', '-n', ns, '--replicas=3']);
    expect(r.code, r.stderr).toBe(0);
    const scale = await api.get(`/apis/${GROUP}/v1alpha1/namespaces/${ns}/${PLURAL}/s/scale`);
    expect(scale.spec.replicas).toBe(3);
  });
});

describe('the Helm chart', () => {
  const chart = join(repo, 'charts', 'shardserve');

  it('passes helm lint', () => {
    const r = helm(['lint', chart]);
    expect(r.code, r.stdout + r.stderr).toBe(0);
  });

  it('rejects unknown values (values.schema.json, additionalProperties: false)', () => {
    const r = helm(['lint', chart, '--set', 'replicas=2']);
    expect(r.code).not.toBe(0);
    expect(r.stdout + r.stderr).toContain("additional properties 'replicas' not allowed");
  });

  it('renders manifests the API server accepts (helm template | kubectl apply --dry-run=server)', async () => {
    const ns = await newNamespace(api, 'chart-dry-run');
    const t = helm(['template', 'shardserve', chart, '-n', ns, '--kube-version', K8S_VERSION]);
    expect(t.code, t.stderr).toBe(0);
    const r = kubectl(cp, ['apply', '--dry-run=server', '-n', ns, '-f', '-'], { input: t.stdout });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('deployment.apps/shardserve created (server dry run)');
    expect(r.stdout).toContain(`customresourcedefinition.apiextensions.k8s.io/${CRD_NAME}`);
  });

  it('grants only namespaced Roles when watchNamespaces is set', () => {
    const t = helm(['template', 'shardserve', chart, '-n', 'ops', '--kube-version', K8S_VERSION, '--set', 'watchNamespaces={team-a,team-b}']);
    expect(t.code, t.stderr).toBe(0);
    const kinds = t.stdout.split('\n---').map((d) => [d.match(/^kind: (\w+)/m)?.[1], d.match(/^ {2}namespace: (\S+)/m)?.[1]].join('/'));
    expect(kinds.filter((k) => k.startsWith('ClusterRole'))).toEqual([]);
    expect(kinds.filter((k) => k.startsWith('Role/')).sort()).toEqual(['Role/ops', 'Role/team-a', 'Role/team-b']);
  });

  describe('installed into the test cluster', () => {
    let ns: string;
    const sa = () => `system:serviceaccount:${ns}:shardserve`;

    beforeAll(async () => {
      ns = await newNamespace(api, 'shardserve-system');
      // The CRD was applied with kubectl above: let Helm adopt it (the documented path, see the chart README).
      expect(kubectl(cp, ['label', 'crd', CRD_NAME, 'app.kubernetes.io/managed-by=Helm', '--overwrite']).code).toBe(0);
      expect(kubectl(cp, ['annotate', 'crd', CRD_NAME, 'meta.helm.sh/release-name=shardserve', `meta.helm.sh/release-namespace=${ns}`, '--overwrite']).code).toBe(0);
      const r = helm(['install', 'shardserve', chart, '-n', ns]);
      expect(r.code, r.stderr).toBe(0);
    });

    it('creates the operator Deployment (non-root, read-only root FS), ServiceAccount and metrics Service', async () => {
      const d = await api.get(`/apis/apps/v1/namespaces/${ns}/deployments/shardserve`);
      const c = d.spec.template.spec.containers[0];
      expect(c.args.slice(0, 2)).toEqual(['operator', '--listen=0.0.0.0:8080']);
      expect(c.securityContext).toEqual({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ['ALL'] } });
      expect(d.spec.template.spec.serviceAccountName).toBe('shardserve');
      expect((await api.get(`/api/v1/namespaces/${ns}/serviceaccounts/shardserve`)).metadata.name).toBe('shardserve');
      expect((await api.get(`/api/v1/namespaces/${ns}/services/shardserve-metrics`)).spec.ports[0].port).toBe(8080);
      // The controller manager is real: the Deployment gets its pod.
      await eventually('an operator pod', async () => (await api.get(`/api/v1/namespaces/${ns}/pods?labelSelector=app.kubernetes.io%2Fcomponent%3Doperator`)).items.length === 1);
    });

    it('keeps the CRD on uninstall-sensitive upgrades (resource-policy: keep, managed by the release)', async () => {
      const crd = await api.get(`/apis/apiextensions.k8s.io/v1/customresourcedefinitions/${CRD_NAME}`);
      expect(crd.metadata.annotations['helm.sh/resource-policy']).toBe('keep');
      expect(crd.metadata.annotations['meta.helm.sh/release-name']).toBe('shardserve');
    });

    const allowed: [string, string, string?][] = [
      ['list', 'distributedinferences.inference.shardserve.io'],
      ['watch', 'distributedinferences.inference.shardserve.io'],
      ['update', 'distributedinferences.inference.shardserve.io', 'status'],
      ['create', 'statefulsets.apps'],
      ['patch', 'statefulsets.apps'],
      ['delete', 'statefulsets.apps'],
      ['patch', 'services'],
      ['patch', 'configmaps'],
      ['patch', 'endpointslices.discovery.k8s.io'],
      ['delete', 'pods'],
      ['create', 'events'],
      ['update', 'leases.coordination.k8s.io', 'release namespace'],
    ];
    const denied: [string, string, string?][] = [
      ['get', 'secrets'],
      ['list', 'secrets'],
      ['create', 'pods'],
      ['update', 'pods'],
      ['delete', 'services'],
      ['delete', 'configmaps'],
      ['patch', 'distributedinferences.inference.shardserve.io'],
      ['delete', 'distributedinferences.inference.shardserve.io'],
      ['update', 'leases.coordination.k8s.io'],
      ['create', 'clusterroles.rbac.authorization.k8s.io'],
      ['delete', 'namespaces'],
      ['create', 'pods/exec'],
    ];
    // where: 'status' = the status subresource; 'release namespace' = the chart's own namespace (else another one).
    const canI = (verb: string, res: string, where?: string) =>
      kubectl(cp, ['auth', 'can-i', verb, res, `--as=${sa()}`, '-n', where === 'release namespace' ? ns : 'team-x', ...(where === 'status' ? ['--subresource=status'] : [])]).stdout.trim();

    it.each(allowed)('the operator may %s %s (%s)', (verb, res, where) => expect(canI(verb, res, where)).toBe('yes'));
    it.each(denied)('the operator may not %s %s (%s)', (verb, res, where) => expect(canI(verb, res, where)).toBe('no'));
  });
});
