// Pure builders of every object the operator owns, `(resource[, observed]) → object`: no clock, no
// randomness, no API calls (STYLE 1). The reconciler server-side-applies exactly what these return.
import { createHash } from 'node:crypto';
import type { RankConfig } from '../core/deployment.js';
import { API_VERSION, DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_IMAGE, KIND, RANK_PORT } from './api/schema.js';
import type { DistributedInference } from './api/types.js';

export const FIELD_MANAGER = 'shardserve-operator';
export const LABEL_NAME = 'inference.shardserve.io/name';
export const LABEL_GROUP = 'inference.shardserve.io/group';
export const LABEL_REVISION = 'inference.shardserve.io/revision';
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const MANAGED_BY = 'shardserve-operator';
/** Hash of the applied object itself: the reconciler re-applies only when the desired hash differs. */
export const ANNOTATION_APPLIED = 'inference.shardserve.io/applied-hash';
/** The pod-index label the StatefulSet controller puts on every pod (Kubernetes ≥ 1.28). */
export const POD_INDEX_LABEL = 'apps.kubernetes.io/pod-index';

export const CONFIG_DIR = '/etc/shardserve';
export const CONFIG_FILE = 'rank-config.json';
export const DECRYPTION_DIR = '/var/run/secrets/shardserve/decryption';
export const RANK_UID = 65532;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace: string; [k: string]: any }; [k: string]: any };

/** The spec with every default filled in (the API server stores it this way; builders never guess). */
export function resolved(r: DistributedInference) {
  const s = r.spec;
  const pipelineStages = s.parallelism?.pipelineStages ?? 1;
  const tensorParallel = s.parallelism?.tensorParallel ?? 1;
  return {
    name: r.metadata!.name!,
    namespace: r.metadata!.namespace!,
    modelName: s.modelName ?? r.metadata!.name!,
    pipelineStages,
    tensorParallel,
    worldSize: pipelineStages * tensorParallel,
    replicas: s.replicas ?? 1,
    image: s.runtime?.image ?? DEFAULT_IMAGE,
    grpcPort: s.serving?.grpcPort ?? DEFAULT_GRPC_PORT,
    httpPort: s.serving?.httpPort ?? DEFAULT_HTTP_PORT,
    serviceType: s.serving?.serviceType ?? 'ClusterIP',
    loadTimeoutSeconds: s.runtime?.loadTimeoutSeconds ?? 1800,
  };
}

export const names = {
  headless: (name: string) => `${name}-ranks`,
  client: (name: string) => name,
  config: (name: string) => `${name}-config`,
  group: (name: string, group: number) => `${name}-g${group}`,
  frontDoorSlice: (name: string) => `${name}-frontdoor`,
  pod: (name: string, group: number, rank: number) => `${name}-g${group}-${rank}`,
};

export function ownerReference(r: DistributedInference) {
  return { apiVersion: API_VERSION, kind: KIND, name: r.metadata!.name!, uid: r.metadata!.uid!, controller: true, blockOwnerDeletion: true };
}

export function commonLabels(r: DistributedInference): Record<string, string> {
  return {
    'app.kubernetes.io/name': 'shardserve',
    'app.kubernetes.io/instance': r.metadata!.name!,
    [LABEL_MANAGED_BY]: MANAGED_BY,
    [LABEL_NAME]: r.metadata!.name!,
  };
}

/** Selector of every rank pod of the resource (status.selector, for the scale subresource). */
export function podSelector(r: DistributedInference): string {
  return `${LABEL_NAME}=${r.metadata!.name!}`;
}

function meta(r: DistributedInference, name: string, labels: Record<string, string> = {}) {
  return { name, namespace: r.metadata!.namespace!, labels: { ...commonLabels(r), ...labels }, ownerReferences: [ownerReference(r)] };
}

/** Canonical JSON (sorted keys) so equal objects always hash alike. */
export function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v as object)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonicalJson((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

export function shortHash(v: unknown): string {
  return createHash('sha256').update(canonicalJson(v)).digest('hex').slice(0, 10);
}

/** Marks an object with the hash of its own content (the reconciler compares it with the cache). */
export function withAppliedHash<T extends K8sObject>(obj: T): T {
  const hash = shortHash(obj);
  return { ...obj, metadata: { ...obj.metadata, annotations: { ...(obj.metadata.annotations ?? {}), [ANNOTATION_APPLIED]: hash } } };
}

export function rankConfig(r: DistributedInference): RankConfig {
  const s = r.spec;
  const v = resolved(r);
  const dec = s.checkpoint.decryption;
  return {
    modelName: v.modelName,
    model: {
      uri: s.model.uri,
      ...(s.model.parameterNames && Object.keys(s.model.parameterNames).length ? { parameterNames: s.model.parameterNames } : {}),
      ...(s.model.cutTensors ? { cutTensors: s.model.cutTensors } : {}),
    },
    checkpoint: {
      uri: s.checkpoint.uri,
      strategy: s.checkpoint.strategy,
      format: s.checkpoint.format ?? 'auto',
      ...(dec ? { decryption: { keyFile: `${DECRYPTION_DIR}/key`, mode: dec.mode ?? 'AES-GCM' } } : {}),
    },
    parallelism: { pipelineStages: v.pipelineStages, tensorParallel: v.tensorParallel },
    serving: { grpcPort: v.grpcPort, httpPort: v.httpPort, rankPort: RANK_PORT },
  };
}

export function configMap(r: DistributedInference): K8sObject {
  return withAppliedHash({
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: meta(r, names.config(r.metadata!.name!)),
    data: { [CONFIG_FILE]: `${JSON.stringify(rankConfig(r), null, 2)}\n` },
  });
}

/** Stable DNS for every rank (peers resolve each other before they are ready, hence publishNotReadyAddresses). */
export function headlessService(r: DistributedInference): K8sObject {
  return withAppliedHash({
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(r, names.headless(r.metadata!.name!)),
    spec: {
      clusterIP: 'None',
      publishNotReadyAddresses: true,
      selector: { [LABEL_NAME]: r.metadata!.name! },
      ports: [{ name: 'rank', port: RANK_PORT, targetPort: RANK_PORT, protocol: 'TCP' }],
    },
  });
}

/**
 * The client Service has no selector: the operator itself lists its endpoints (frontDoorSlice), so
 * only the front door of a group whose every rank is ready at one revision ever gets traffic.
 */
export function clientService(r: DistributedInference): K8sObject {
  const v = resolved(r);
  return withAppliedHash({
    apiVersion: 'v1',
    kind: 'Service',
    metadata: meta(r, names.client(v.name)),
    spec: {
      type: v.serviceType,
      ports: [
        { name: 'grpc', port: v.grpcPort, targetPort: v.grpcPort, protocol: 'TCP', appProtocol: 'grpc' },
        { name: 'http', port: v.httpPort, targetPort: v.httpPort, protocol: 'TCP', appProtocol: 'http' },
      ],
    },
  });
}

export type ServingFrontDoor = { podName: string; ip: string; group: number };

export function frontDoorSlice(r: DistributedInference, serving: ServingFrontDoor[]): K8sObject {
  const v = resolved(r);
  return withAppliedHash({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: meta(r, names.frontDoorSlice(v.name), {
      'kubernetes.io/service-name': names.client(v.name),
      'endpointslice.kubernetes.io/managed-by': `${MANAGED_BY}.shardserve.io`,
    }),
    addressType: 'IPv4',
    endpoints: [...serving]
      .sort((a, b) => a.group - b.group)
      .map((f) => ({
        addresses: [f.ip],
        conditions: { ready: true, serving: true, terminating: false },
        targetRef: { kind: 'Pod', namespace: v.namespace, name: f.podName },
      })),
    ports: [
      { name: 'grpc', port: v.grpcPort, protocol: 'TCP', appProtocol: 'grpc' },
      { name: 'http', port: v.httpPort, protocol: 'TCP', appProtocol: 'http' },
    ],
  });
}

const restricted = {
  allowPrivilegeEscalation: false,
  readOnlyRootFilesystem: true,
  runAsNonRoot: true,
  capabilities: { drop: ['ALL'] },
  seccompProfile: { type: 'RuntimeDefault' },
};

/** The rank pod template of group `group` without its revision label (what the revision hashes). */
function podTemplate(r: DistributedInference, group: number) {
  const s = r.spec;
  const v = resolved(r);
  const rt = s.runtime ?? {};
  const env = [
    { name: 'SHARDSERVE_RANK', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: `metadata.labels['${POD_INDEX_LABEL}']` } } },
    { name: 'SHARDSERVE_GROUP', value: String(group) },
    { name: 'SHARDSERVE_WORLD_SIZE', value: String(v.worldSize) },
    { name: 'SHARDSERVE_PIPELINE_STAGES', value: String(v.pipelineStages) },
    { name: 'SHARDSERVE_TENSOR_PARALLEL', value: String(v.tensorParallel) },
    { name: 'SHARDSERVE_PEERS', value: `${names.group(v.name, group)}-{rank}.${names.headless(v.name)}.${v.namespace}.svc:${RANK_PORT}` },
    { name: 'SHARDSERVE_CONFIG', value: `${CONFIG_DIR}/${CONFIG_FILE}` },
    { name: 'SHARDSERVE_POD_NAME', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } } },
    { name: 'SHARDSERVE_NAMESPACE', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } } },
    ...(rt.env ?? []).map((e) => ({ name: e.name, value: e.value ?? '' })),
  ];
  const dec = s.checkpoint.decryption;
  const volumes: unknown[] = [
    { name: 'config', configMap: { name: names.config(v.name) } },
    { name: 'tmp', emptyDir: {} },
    ...(dec ? [{ name: 'decryption-key', secret: { secretName: dec.secretName, items: [{ key: dec.key ?? 'key', path: 'key' }] } }] : []),
  ];
  const mounts: unknown[] = [
    { name: 'config', mountPath: CONFIG_DIR, readOnly: true },
    { name: 'tmp', mountPath: '/tmp' },
    ...(dec ? [{ name: 'decryption-key', mountPath: DECRYPTION_DIR, readOnly: true }] : []),
  ];
  const creds = s.checkpoint.credentials;
  const period = 10;
  return {
    metadata: {
      labels: { ...(rt.podLabels ?? {}), ...commonLabels(r), [LABEL_GROUP]: String(group) } as Record<string, string>,
      ...(rt.podAnnotations && Object.keys(rt.podAnnotations).length ? { annotations: rt.podAnnotations } : {}),
    },
    spec: {
      enableServiceLinks: false,
      automountServiceAccountToken: false,
      ...(rt.serviceAccountName ? { serviceAccountName: rt.serviceAccountName } : {}),
      ...(rt.priorityClassName ? { priorityClassName: rt.priorityClassName } : {}),
      ...(rt.nodeSelector ? { nodeSelector: rt.nodeSelector } : {}),
      ...(rt.tolerations ? { tolerations: rt.tolerations } : {}),
      ...(rt.affinity ? { affinity: rt.affinity } : {}),
      ...(rt.imagePullSecrets?.length ? { imagePullSecrets: rt.imagePullSecrets.map((name) => ({ name })) } : {}),
      securityContext: { runAsNonRoot: true, runAsUser: RANK_UID, runAsGroup: RANK_UID, fsGroup: RANK_UID, seccompProfile: { type: 'RuntimeDefault' } },
      terminationGracePeriodSeconds: 30,
      containers: [
        {
          name: 'rank',
          image: v.image,
          imagePullPolicy: rt.imagePullPolicy ?? 'IfNotPresent',
          env,
          // The Secret's keys are AWS environment variables; the kubelet reads them by reference.
          ...(creds ? { envFrom: [{ secretRef: { name: creds.secretName } }] } : {}),
          ports: [
            { name: 'rank', containerPort: RANK_PORT, protocol: 'TCP' },
            { name: 'grpc', containerPort: v.grpcPort, protocol: 'TCP' },
            { name: 'http', containerPort: v.httpPort, protocol: 'TCP' },
          ],
          startupProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: period, failureThreshold: Math.ceil(v.loadTimeoutSeconds / period) },
          livenessProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: period, failureThreshold: 3 },
          readinessProbe: { httpGet: { path: '/readyz', port: 'http' }, periodSeconds: 5, failureThreshold: 2 },
          ...(rt.resources ? { resources: rt.resources } : {}),
          securityContext: restricted,
          terminationMessagePolicy: 'FallbackToLogsOnError',
          volumeMounts: mounts,
        },
      ],
      volumes,
    },
  };
}

/** The revision of the current spec: every rank pod of a serving group carries it. */
export function revision(r: DistributedInference): string {
  // Group 0's template stands for all (groups differ only in SHARDSERVE_GROUP and the group label).
  return shortHash({ template: podTemplate(r, 0), config: rankConfig(r) });
}

/**
 * One StatefulSet per replica group: stable rank identities (pod index = rank), all ranks started at
 * once (Parallel), and OnDelete updates so the operator — not the StatefulSet controller — decides
 * when a group's ranks are replaced, always all together (see rollout.ts).
 */
export function groupStatefulSet(r: DistributedInference, group: number): K8sObject {
  const v = resolved(r);
  const rev = revision(r);
  const template = podTemplate(r, group);
  template.metadata.labels[LABEL_REVISION] = rev;
  return withAppliedHash({
    apiVersion: 'apps/v1',
    kind: 'StatefulSet',
    metadata: meta(r, names.group(v.name, group), { [LABEL_GROUP]: String(group), [LABEL_REVISION]: rev }),
    spec: {
      replicas: v.worldSize,
      serviceName: names.headless(v.name),
      podManagementPolicy: 'Parallel',
      updateStrategy: { type: 'OnDelete' },
      selector: { matchLabels: { [LABEL_NAME]: v.name, [LABEL_GROUP]: String(group) } },
      template,
    },
  });
}
