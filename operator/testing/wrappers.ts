// Small builders for test objects (in the manner of jobset's wrappers.go): a valid resource by
// default, and one method per thing a test wants to change, so each test says only what matters.
import { API_VERSION, KIND } from '../api/schema.js';
import type { DistributedInference } from '../api/types.js';

export class ResourceWrapper {
  readonly obj: DistributedInference;

  constructor(name = 'demo', namespace = 'default') {
    this.obj = {
      apiVersion: API_VERSION,
      kind: KIND,
      metadata: { name, namespace, uid: `uid-${name}`, generation: 1 },
      spec: {
        model: { uri: 's3://models/net.onnx' },
        checkpoint: { uri: 's3://models/ckpt/', strategy: 's3://models/strategy/' },
      },
    };
  }

  /** The spec with every schema default filled in, as the API server stores it. */
  defaulted(): this {
    const s = this.obj.spec;
    s.checkpoint.format ??= 'auto';
    if (s.checkpoint.decryption) {
      s.checkpoint.decryption.key ??= 'key';
      s.checkpoint.decryption.mode ??= 'AES-GCM';
    }
    s.parallelism = { pipelineStages: 1, tensorParallel: 1, ...s.parallelism };
    s.replicas ??= 1;
    s.runtime = { image: 'shardserve/runtime:0.1.0', imagePullPolicy: 'IfNotPresent', loadTimeoutSeconds: 1800, ...s.runtime };
    s.serving = { grpcPort: 8001, httpPort: 8000, serviceType: 'ClusterIP', ...s.serving };
    return this;
  }

  layout(pipelineStages: number, tensorParallel: number): this {
    this.obj.spec.parallelism = { ...this.obj.spec.parallelism, pipelineStages, tensorParallel };
    return this;
  }

  replicas(n: number): this {
    this.obj.spec.replicas = n;
    return this;
  }

  image(image: string): this {
    this.obj.spec.runtime = { ...this.obj.spec.runtime, image };
    return this;
  }

  credentials(secretName: string): this {
    this.obj.spec.checkpoint.credentials = { secretName };
    return this;
  }

  decryption(secretName: string, mode: 'AES-GCM' | 'AES-CBC' | 'SM4-CBC' = 'AES-GCM'): this {
    this.obj.spec.checkpoint.decryption = { secretName, mode };
    return this;
  }

  generation(g: number): this {
    this.obj.metadata!.generation = g;
    return this;
  }

  /** Deep-merges a patch into the spec (for invalid-resource table cases). */
  spec(patch: Record<string, unknown>): this {
    merge(this.obj.spec as unknown as Record<string, unknown>, patch);
    return this;
  }

  build(): DistributedInference {
    return structuredClone(this.obj);
  }

  /** What a user applies: no uid or generation (the API server assigns them). */
  forApply(): DistributedInference {
    const o = this.build();
    delete o.metadata!.uid;
    delete o.metadata!.generation;
    return o;
  }
}

function merge(into: Record<string, unknown>, patch: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(patch)) {
    if (v && typeof v === 'object' && !Array.isArray(v) && into[k] && typeof into[k] === 'object') merge(into[k] as Record<string, unknown>, v as Record<string, unknown>);
    else into[k] = v;
  }
}

export const resource = (name?: string, namespace?: string) => new ResourceWrapper(name, namespace);

/** A rank pod as the StatefulSet controller would create it, with the kubelet's status set by the test. */
export class PodWrapper {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  readonly obj: any;

  constructor(resourceName: string, group: number, rank: number, revision: string) {
    this.obj = {
      metadata: {
        name: `${resourceName}-g${group}-${rank}`,
        uid: `pod-uid-${group}-${rank}-${revision}`,
        labels: {
          'inference.shardserve.io/name': resourceName,
          'inference.shardserve.io/group': String(group),
          'inference.shardserve.io/revision': revision,
          'apps.kubernetes.io/pod-index': String(rank),
        },
        annotations: {},
      },
      status: { phase: 'Pending' },
    };
  }

  ready(ip = `10.0.${this.obj.metadata.labels['inference.shardserve.io/group']}.${this.obj.metadata.labels['apps.kubernetes.io/pod-index']}`): this {
    this.obj.status = { phase: 'Running', podIP: ip, conditions: [{ type: 'Ready', status: 'True' }], containerStatuses: [{ name: 'rank', ready: true, state: { running: {} } }] };
    return this;
  }

  terminated(exitCode: number, message: string): this {
    this.obj.status = {
      phase: 'Running',
      conditions: [{ type: 'Ready', status: 'False' }],
      containerStatuses: [{ name: 'rank', ready: false, state: { waiting: { reason: 'CrashLoopBackOff' } }, lastState: { terminated: { exitCode, reason: 'Error', message } } }],
    };
    return this;
  }

  /** Running with an address but not Ready: the rank is loading (the operator asks its /metrics). */
  loading(ip = `10.0.${this.obj.metadata.labels['inference.shardserve.io/group']}.${this.obj.metadata.labels['apps.kubernetes.io/pod-index']}`): this {
    this.obj.status = { phase: 'Running', podIP: ip, conditions: [{ type: 'Ready', status: 'False' }], containerStatuses: [{ name: 'rank', ready: false, started: true, state: { running: {} } }] };
    return this;
  }

  deleting(): this {
    this.obj.metadata.deletionTimestamp = '2026-01-01T00:00:00Z';
    return this;
  }

  build() {
    return structuredClone(this.obj);
  }
}

export const pod = (resourceName: string, group: number, rank: number, revision: string) => new PodWrapper(resourceName, group, rank, revision);
