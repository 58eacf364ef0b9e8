import { describe, expect, it } from 'vitest';
import {
  ANNOTATION_APPLIED, clientService, configMap, frontDoorSlice, groupStatefulSet, headlessService, rankConfig, revision, shortHash, type K8sObject,
} from './builders.js';
import { resource } from './testing/wrappers.js';

const owner = { apiVersion: 'inference.shardserve.io/v1alpha1', kind: 'DistributedInference', name: 'llm', uid: 'uid-llm', controller: true, blockOwnerDeletion: true };
const labels = { 'app.kubernetes.io/name': 'shardserve', 'app.kubernetes.io/instance': 'llm', 'app.kubernetes.io/managed-by': 'shardserve-operator', 'inference.shardserve.io/name': 'llm' };
const stripHash = (o: K8sObject) => {
  const { [ANNOTATION_APPLIED]: h, ...rest } = o.metadata.annotations ?? {};
  expect(h).toMatch(/^[0-9a-f]{10}$/);
  return { ...o, metadata: { ...o.metadata, annotations: Object.keys(rest).length ? rest : undefined } };
};

const llm = () => resource('llm', 'team-a').layout(2, 2).credentials('s3-creds').decryption('ckpt-key', 'SM4-CBC').defaulted();

describe('pure builders of the owned objects', () => {
  it('the resolved rank configuration names the mounted key file, never the key', () => {
    expect(rankConfig(llm().build())).toEqual({
      modelName: 'llm',
      model: { uri: 's3://models/net.onnx' },
      checkpoint: {
        uri: 's3://models/ckpt/', strategy: 's3://models/strategy/', format: 'auto',
        decryption: { keyFile: '/var/run/secrets/shardserve/decryption/key', mode: 'SM4-CBC' },
      },
      parallelism: { pipelineStages: 2, tensorParallel: 2 },
      serving: { grpcPort: 8001, httpPort: 8000, rankPort: 7000 },
    });
  });

  it('ConfigMap holds the rank configuration as JSON', () => {
    const cm = configMap(llm().build());
    expect(stripHash(cm)).toEqual({
      apiVersion: 'v1', kind: 'ConfigMap',
      metadata: { name: 'llm-config', namespace: 'team-a', labels, ownerReferences: [owner], annotations: undefined },
      data: { 'rank-config.json': `${JSON.stringify(rankConfig(llm().build()), null, 2)}\n` },
    });
  });

  it('headless Service gives every rank stable DNS before it is ready', () => {
    expect(stripHash(headlessService(llm().build()))).toEqual({
      apiVersion: 'v1', kind: 'Service',
      metadata: { name: 'llm-ranks', namespace: 'team-a', labels, ownerReferences: [owner], annotations: undefined },
      spec: { clusterIP: 'None', publishNotReadyAddresses: true, selector: { 'inference.shardserve.io/name': 'llm' }, ports: [{ name: 'rank', port: 7000, targetPort: 7000, protocol: 'TCP' }] },
    });
  });

  it('client Service has no selector (the operator lists its endpoints)', () => {
    expect(stripHash(clientService(llm().spec({ serving: { serviceType: 'LoadBalancer' } }).build()))).toEqual({
      apiVersion: 'v1', kind: 'Service',
      metadata: { name: 'llm', namespace: 'team-a', labels, ownerReferences: [owner], annotations: undefined },
      spec: {
        type: 'LoadBalancer',
        ports: [
          { name: 'grpc', port: 8001, targetPort: 8001, protocol: 'TCP', appProtocol: 'grpc' },
          { name: 'http', port: 8000, targetPort: 8000, protocol: 'TCP', appProtocol: 'http' },
        ],
      },
    });
  });

  it('front-door EndpointSlice lists exactly the serving groups, ordered by group', () => {
    const slice = frontDoorSlice(llm().build(), [
      { podName: 'llm-g1-0', ip: '10.0.0.9', group: 1 },
      { podName: 'llm-g0-0', ip: '10.0.0.5', group: 0 },
    ]);
    expect(stripHash(slice)).toEqual({
      apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice',
      metadata: {
        name: 'llm-frontdoor', namespace: 'team-a', ownerReferences: [owner], annotations: undefined,
        labels: { ...labels, 'kubernetes.io/service-name': 'llm', 'endpointslice.kubernetes.io/managed-by': 'shardserve-operator.shardserve.io' },
      },
      addressType: 'IPv4',
      endpoints: [
        { addresses: ['10.0.0.5'], conditions: { ready: true, serving: true, terminating: false }, targetRef: { kind: 'Pod', namespace: 'team-a', name: 'llm-g0-0' } },
        { addresses: ['10.0.0.9'], conditions: { ready: true, serving: true, terminating: false }, targetRef: { kind: 'Pod', namespace: 'team-a', name: 'llm-g1-0' } },
      ],
      ports: [
        { name: 'grpc', port: 8001, protocol: 'TCP', appProtocol: 'grpc' },
        { name: 'http', port: 8000, protocol: 'TCP', appProtocol: 'http' },
      ],
    });
  });

  it('StatefulSet per group: Parallel, OnDelete, pod contract of DESIGN §5, restricted security', () => {
    const r = llm().spec({ runtime: { env: [{ name: 'LOG_LEVEL', value: 'debug' }], resources: { limits: { cpu: '4' } } } }).build();
    const rev = revision(r);
    const groupLabels = { ...labels, 'inference.shardserve.io/group': '1' };
    const restricted = { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: { drop: ['ALL'] }, seccompProfile: { type: 'RuntimeDefault' } };
    expect(stripHash(groupStatefulSet(r, 1))).toEqual({
      apiVersion: 'apps/v1', kind: 'StatefulSet',
      metadata: { name: 'llm-g1', namespace: 'team-a', labels: { ...groupLabels, 'inference.shardserve.io/revision': rev }, ownerReferences: [owner], annotations: undefined },
      spec: {
        replicas: 4,
        serviceName: 'llm-ranks',
        podManagementPolicy: 'Parallel',
        updateStrategy: { type: 'OnDelete' },
        selector: { matchLabels: { 'inference.shardserve.io/name': 'llm', 'inference.shardserve.io/group': '1' } },
        template: {
          metadata: { labels: { ...groupLabels, 'inference.shardserve.io/revision': rev } },
          spec: {
            enableServiceLinks: false,
            automountServiceAccountToken: false,
            securityContext: { runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532, seccompProfile: { type: 'RuntimeDefault' } },
            terminationGracePeriodSeconds: 30,
            containers: [{
              name: 'rank',
              image: 'shardserve/runtime:0.1.0',
              imagePullPolicy: 'IfNotPresent',
              env: [
                { name: 'SHARDSERVE_RANK', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: "metadata.labels['apps.kubernetes.io/pod-index']" } } },
                { name: 'SHARDSERVE_GROUP', value: '1' },
                { name: 'SHARDSERVE_WORLD_SIZE', value: '4' },
                { name: 'SHARDSERVE_PIPELINE_STAGES', value: '2' },
                { name: 'SHARDSERVE_TENSOR_PARALLEL', value: '2' },
                { name: 'SHARDSERVE_PEERS', value: 'llm-g1-{rank}.llm-ranks.team-a.svc:7000' },
                { name: 'SHARDSERVE_CONFIG', value: '/etc/shardserve/rank-config.json' },
                { name: 'SHARDSERVE_POD_NAME', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } } },
                { name: 'SHARDSERVE_NAMESPACE', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } } },
                { name: 'LOG_LEVEL', value: 'debug' },
              ],
              envFrom: [{ secretRef: { name: 's3-creds' } }],
              ports: [
                { name: 'rank', containerPort: 7000, protocol: 'TCP' },
                { name: 'grpc', containerPort: 8001, protocol: 'TCP' },
                { name: 'http', containerPort: 8000, protocol: 'TCP' },
              ],
              startupProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 10, failureThreshold: 180 },
              livenessProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 10, failureThreshold: 3 },
              readinessProbe: { httpGet: { path: '/readyz', port: 'http' }, periodSeconds: 5, failureThreshold: 2 },
              resources: { limits: { cpu: '4' } },
              securityContext: restricted,
              terminationMessagePolicy: 'FallbackToLogsOnError',
              volumeMounts: [
                { name: 'config', mountPath: '/etc/shardserve', readOnly: true },
                { name: 'tmp', mountPath: '/tmp' },
                { name: 'decryption-key', mountPath: '/var/run/secrets/shardserve/decryption', readOnly: true },
              ],
            }],
            volumes: [
              { name: 'config', configMap: { name: 'llm-config' } },
              { name: 'tmp', emptyDir: {} },
              { name: 'decryption-key', secret: { secretName: 'ckpt-key', items: [{ key: 'key', path: 'key' }] } },
            ],
          },
        },
      },
    });
  });

  it('the revision changes with the pod template or the configuration, not with replicas', () => {
    const base = revision(llm().build());
    expect(revision(llm().replicas(5).build())).toBe(base);
    expect(revision(llm().image('shardserve/runtime:0.2.0').build())).not.toBe(base);
    expect(revision(llm().spec({ model: { uri: 's3://models/net-v2.onnx' } }).build())).not.toBe(base);
  });

  it('builders are pure: the same resource gives byte-identical objects and hashes', () => {
    expect(groupStatefulSet(llm().build(), 0)).toEqual(groupStatefulSet(llm().build(), 0));
    expect(shortHash({ b: 1, a: [2, { d: 1, c: 2 }] })).toBe(shortHash({ a: [2, { c: 2, d: 1 }], b: 1 }));
  });
});
