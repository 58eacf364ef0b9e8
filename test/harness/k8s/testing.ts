// Helpers for suites against the real control plane: an admin API client, one namespace per test
// case, the kubelet's part (writing pod status), and bounded waits.
import { stringify } from 'yaml';
import { GROUP, PLURAL, VERSION } from '../../../operator/api/schema.js';
import type { DistributedInference } from '../../../operator/api/types.js';
import { KubeApi, KubeApiError, type Json } from '../../../operator/kube.js';
import { loadKubeconfig } from '../../../operator/kubeconfig.js';
import { kubectl, type ControlPlane } from './cluster.js';

export function adminApi(cp: ControlPlane): KubeApi {
  return new KubeApi(loadKubeconfig(cp.kubeconfig));
}

let counter = 0;
/** A fresh namespace named after the test case (one per case). */
export async function newNamespace(api: KubeApi, what: string): Promise<string> {
  const name = `${what.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 40)}-${process.pid % 1000}-${++counter}`;
  await api.create('/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
  return name;
}

/** Polls until `fn` returns a value (not undefined/false) or the deadline passes; then throws with the last state. */
export async function eventually<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000, describe?: () => Promise<string>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v as T;
    } catch (e) {
      lastError = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const state = describe ? await describe().catch((e) => String(e)) : '';
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? ` (last error: ${lastError})` : ''}${state ? `\n${state}` : ''}`);
}

export async function getOrUndefined(api: KubeApi, path: string): Promise<Json | undefined> {
  try {
    return await api.get(path);
  } catch (e) {
    if (e instanceof KubeApiError && e.status === 404) return undefined;
    throw e;
  }
}

const podPath = (ns: string, name: string) => `/api/v1/namespaces/${ns}/pods/${name}`;

/** Plays the kubelet: the pod runs and has an IP; Ready, or still loading (not Ready). */
export async function setPodRunning(api: KubeApi, ns: string, name: string, ip: string, ready: boolean): Promise<void> {
  const pod = await api.get(podPath(ns, name));
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const notReady = ready ? {} : { reason: 'ContainersNotReady' };
  pod.status = {
    phase: 'Running',
    podIP: ip,
    podIPs: [{ ip }],
    hostIP: '127.0.0.1',
    startTime: now,
    conditions: [
      { type: 'PodScheduled', status: 'True', lastTransitionTime: now },
      { type: 'Initialized', status: 'True', lastTransitionTime: now },
      { type: 'ContainersReady', status: ready ? 'True' : 'False', lastTransitionTime: now, ...notReady },
      { type: 'Ready', status: ready ? 'True' : 'False', lastTransitionTime: now, ...notReady },
    ],
    containerStatuses: [{ name: 'rank', ready, started: true, restartCount: 0, image: pod.spec.containers[0].image, imageID: '', state: { running: { startedAt: now } } }],
  };
  await api.replace(`${podPath(ns, name)}/status`, pod, 'Pod/status');
}

/** Plays the kubelet: the pod runs, has an IP and is Ready. */
export const setPodReady = (api: KubeApi, ns: string, name: string, ip: string): Promise<void> => setPodRunning(api, ns, name, ip, true);

/** Plays the kubelet: the rank exited with `message` as its termination message and is restarting. */
export async function setPodTerminated(api: KubeApi, ns: string, name: string, exitCode: number, message: string): Promise<void> {
  const pod = await api.get(podPath(ns, name));
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  pod.status = {
    phase: 'Running',
    hostIP: '127.0.0.1',
    startTime: now,
    conditions: [{ type: 'Ready', status: 'False', lastTransitionTime: now, reason: 'ContainersNotReady' }],
    containerStatuses: [{
      name: 'rank', ready: false, started: false, restartCount: 1, image: pod.spec.containers[0].image, imageID: '',
      state: { waiting: { reason: 'CrashLoopBackOff', message: 'back-off restarting failed container' } },
      lastState: { terminated: { exitCode, reason: 'Error', message, startedAt: now, finishedAt: now } },
    }],
  };
  await api.replace(`${podPath(ns, name)}/status`, pod, 'Pod/status');
}

export async function listPods(api: KubeApi, ns: string, selector: string): Promise<Json[]> {
  const l = await api.get(`/api/v1/namespaces/${ns}/pods?labelSelector=${encodeURIComponent(selector)}`);
  return l.items;
}

export function applyYaml(cp: ControlPlane, yaml: string, extra: string[] = []) {
  return kubectl(cp, ['apply', ...extra, '-f', '-'], { input: yaml });
}

/** API path of DistributedInferences in `ns` (one of them when `name` is given). */
export const diPath = (ns: string, name = '') => `/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}${name ? `/${name}` : ''}`;

/** `kubectl apply` a test resource as a user would write it (no uid or generation). */
export function applyResource(cp: ControlPlane, r: DistributedInference): void {
  const obj = structuredClone(r);
  delete obj.metadata!.uid;
  delete obj.metadata!.generation;
  const res = applyYaml(cp, stringify(obj));
  if (res.code !== 0) throw new Error(`kubectl apply of ${r.metadata!.name} failed: ${res.stderr}`);
}
