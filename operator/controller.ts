// The reconcile loop: informer events → keyed queue → gather (from the caches) → decide (pure) →
// act (thin: server-side apply, deletes, one status write, then events). Clock, clients and
// configuration come in through the constructor (STYLE 7).
import { GROUP, PLURAL, VERSION } from './api/schema.js';
import type { DistributedInference } from './api/types.js';
import { ANNOTATION_APPLIED, FIELD_MANAGER, LABEL_NAME, resolved, type K8sObject } from './builders.js';
import { decide, type Decision, type Pod } from './decide.js';
import { InformerSet, type KindName, type KubernetesObject } from './informers.js';
import { KubeApiError, objectPath, type KubeApi } from './kube.js';
import { LoadProgressGatherer, type HttpGet } from './load-progress.js';
import type { Logger } from './logger.js';
import type { OperatorMetrics } from './metrics.js';
import { WorkQueue } from './queue.js';

export type ControllerOptions = {
  api: KubeApi;
  namespaces: string[] | 'all';
  clock: () => Date;
  log: Logger;
  metrics: OperatorMetrics;
  workers?: number;
  resyncMs?: number;
  /** Name of this operator instance (events' reportingInstance). */
  identity: string;
  /** How load progress is read from a rank's /metrics (default: fetch with a deadline). */
  httpGet?: HttpGet;
};

/** What we wrote but the caches may not show yet; entries expire so a lost event cannot hide drift. */
class RecentWrites {
  private readonly m = new Map<string, { value: string; until: number }>();
  constructor(private readonly ttlMs: number) {}
  set(key: string, value: string, now: number): void {
    this.m.set(key, { value, until: now + this.ttlMs });
  }
  get(key: string, now: number): string | undefined {
    const e = this.m.get(key);
    if (!e) return undefined;
    if (e.until < now) {
      this.m.delete(key);
      return undefined;
    }
    return e.value;
  }
  delete(key: string): void {
    this.m.delete(key);
  }
  /** Live entries under a key prefix, with the prefix removed. */
  withPrefix(prefix: string, now: number): [string, string][] {
    const out: [string, string][] = [];
    for (const [k, e] of this.m) if (k.startsWith(prefix) && e.until >= now) out.push([k.slice(prefix.length), e.value]);
    return out;
  }
}

const OWNED_KINDS: KindName[] = ['ConfigMap', 'Service', 'StatefulSet', 'EndpointSlice'];

export class Controller {
  private readonly informers: InformerSet;
  private readonly queue: WorkQueue;
  private resyncTimer?: NodeJS.Timeout;
  private cachesSynced = false;
  private readonly applied = new RecentWrites(30_000);
  private readonly deletedPods = new RecentWrites(30_000);
  /** key → the resourceVersion our last status write replaced (the cache still shows it until the event). */
  private readonly statusWritten = new RecentWrites(30_000);
  private readonly loadProgress: LoadProgressGatherer;

  constructor(private readonly o: ControllerOptions) {
    this.loadProgress = new LoadProgressGatherer({ get: o.httpGet });
    this.informers = new InformerSet(o.api, o.namespaces, {
      onChange: (kind, obj) => this.enqueueFor(kind, obj),
      onError: (kind, ns, err) => o.log.warn('informer stopped; restarting with backoff', { kind, namespace: ns ?? '*', error: String(err) }),
    });
    this.queue = new WorkQueue({
      workers: o.workers ?? 4,
      handle: (key) => this.reconcileTimed(key),
      onError: (key, err) => o.log.error('reconcile failed; retrying with backoff', { key, error: err instanceof Error ? err.message : String(err) }),
    });
    o.metrics.queueDepth(() => this.queue.depth);
  }

  private enqueueFor(kind: KindName, obj: KubernetesObject): void {
    // Until every cache is filled, a reconcile would see owned objects as missing and re-apply them.
    if (!this.cachesSynced) return;
    const ns = obj.metadata?.namespace;
    if (!ns) return;
    const name = kind === 'DistributedInference' ? obj.metadata?.name : obj.metadata?.labels?.[LABEL_NAME];
    if (name) this.queue.add(`${ns}/${name}`);
  }

  async start(): Promise<void> {
    await this.informers.start();
    this.cachesSynced = true;
    for (const k of this.informers.keys()) this.queue.add(k);
    const resync = this.o.resyncMs ?? 5 * 60_000;
    this.resyncTimer = setInterval(() => {
      for (const k of this.informers.keys()) this.queue.add(k);
    }, resync);
    this.resyncTimer.unref();
  }

  async stop(): Promise<void> {
    if (this.resyncTimer) clearInterval(this.resyncTimer);
    await this.queue.shutdown();
    await this.informers.stop();
  }

  health() {
    return this.informers.health();
  }

  synced(): boolean {
    return this.informers.synced();
  }

  idle(): Promise<void> {
    return this.queue.idle();
  }

  private async reconcileTimed(key: string): Promise<void> {
    const t0 = process.hrtime.bigint();
    try {
      await this.reconcile(key);
      this.o.metrics.reconciled('success', Number(process.hrtime.bigint() - t0) / 1e9);
    } catch (e) {
      this.o.metrics.reconciled('error', Number(process.hrtime.bigint() - t0) / 1e9);
      throw e;
    }
  }

  /** Gather → decide → act for one resource. */
  async reconcile(key: string): Promise<void> {
    const [namespace, name] = key.split('/');
    const r = this.informers.get('DistributedInference', namespace, name) as DistributedInference | undefined;
    if (!r || (r.metadata as { deletionTimestamp?: string }).deletionTimestamp) {
      this.loadProgress.forget(key);
      return; // owner references let the GC clean up
    }
    const nowMs = this.o.clock().getTime();
    if (this.statusWritten.get(key, nowMs) === r.metadata!.resourceVersion) return; // our own write is on its way to the cache

    // Gather.
    const uid = r.metadata!.uid!;
    const owned = (o: KubernetesObject) => (o.metadata?.ownerReferences ?? []).some((ref: { uid: string; controller?: boolean }) => ref.uid === uid && ref.controller);
    const applied = new Map<string, string | undefined>();
    const statefulSets: K8sObject[] = [];
    for (const kind of OWNED_KINDS) {
      for (const o of this.informers.list(kind, namespace)) {
        if (!owned(o)) continue;
        const objKey = `${namespace}/${kind}/${o.metadata!.name}`;
        const have = o.metadata?.annotations?.[ANNOTATION_APPLIED];
        const wrote = this.applied.get(objKey, nowMs);
        if (wrote !== undefined && wrote === have) this.applied.delete(objKey);
        applied.set(`${kind}/${o.metadata!.name}`, wrote ?? have);
        if (kind === 'StatefulSet') statefulSets.push(o as K8sObject);
      }
    }
    // Objects applied moments ago whose informer event has not arrived yet count as applied.
    for (const [k, v] of this.applied.withPrefix(`${namespace}/`, nowMs)) if (!applied.has(k)) applied.set(k, v);
    const pods = this.informers
      .list('Pod', namespace)
      .filter((p) => p.metadata?.labels?.[LABEL_NAME] === name)
      .map((p) => (this.deletedPods.get(p.metadata!.uid!, nowMs) ? { ...p, metadata: { ...p.metadata, deletionTimestamp: 'requested' } } : p)) as Pod[];
    // Loading ranks are asked over HTTP (they have no API token to report on their pods).
    const loadProgress = await this.loadProgress.gather(key, pods, resolved(r).httpPort);

    // Decide.
    const d = decide({ resource: r, statefulSets, pods, applied, loadProgress }, this.o.clock());

    // Act.
    await this.act(r, d, nowMs);
    if (d.requeueAfterMs) this.queue.addAfter(key, d.requeueAfterMs);
  }

  private async act(r: DistributedInference, d: Decision, nowMs: number): Promise<void> {
    const ns = r.metadata!.namespace!;
    const key = `${ns}/${r.metadata!.name}`;
    // Independent objects: apply them concurrently (the kubelet waits for a missing ConfigMap anyway).
    await Promise.all(
      d.apply.map(async (obj) => {
        await this.o.api.apply(objectPath(obj.apiVersion, obj.kind, ns, obj.metadata.name), obj, FIELD_MANAGER);
        this.applied.set(`${ns}/${obj.kind}/${obj.metadata.name}`, obj.metadata.annotations[ANNOTATION_APPLIED], nowMs);
      }),
    );
    for (const name of d.deleteStatefulSets) {
      await ignoreGone(this.o.api.delete(objectPath('apps/v1', 'StatefulSet', ns, name), 'StatefulSet', { propagationPolicy: 'Background' }));
    }
    for (const p of d.deletePods) {
      await ignoreGone(this.o.api.delete(objectPath('v1', 'Pod', ns, p.name), 'Pod', p.uid ? { preconditions: { uid: p.uid } } : undefined));
      if (p.uid) this.deletedPods.set(p.uid, 'deleted', nowMs);
    }
    if (d.statusChanged) {
      const path = `/apis/${GROUP}/${VERSION}/namespaces/${ns}/${PLURAL}/${r.metadata!.name}/status`;
      try {
        await this.o.api.replace(path, { apiVersion: r.apiVersion, kind: r.kind, metadata: { ...r.metadata, managedFields: undefined }, spec: r.spec, status: d.status }, 'DistributedInference/status');
        this.statusWritten.set(key, r.metadata!.resourceVersion!, nowMs);
      } catch (e) {
        if (e instanceof KubeApiError && (e.status === 409 || e.status === 404)) {
          // Someone changed it since our cache saw it: the watch event requeues the key.
          this.o.log.debug('status write conflicted; waiting for the newer version', { key });
          return;
        }
        throw e;
      }
    }
    for (const ev of d.events) await this.event(r, ev.type, ev.reason, ev.message);
  }

  private async event(r: DistributedInference, type: string, reason: string, message: string): Promise<void> {
    const ns = r.metadata!.namespace!;
    const now = this.o.clock().toISOString();
    try {
      await this.o.api.create(`/api/v1/namespaces/${ns}/events`, {
        apiVersion: 'v1',
        kind: 'Event',
        metadata: { generateName: `${r.metadata!.name}.`, namespace: ns },
        involvedObject: { apiVersion: r.apiVersion, kind: r.kind, name: r.metadata!.name, namespace: ns, uid: r.metadata!.uid, resourceVersion: r.metadata!.resourceVersion },
        type,
        reason,
        message: message.slice(0, 1024),
        source: { component: FIELD_MANAGER },
        reportingComponent: FIELD_MANAGER,
        reportingInstance: this.o.identity,
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1,
      });
    } catch (e) {
      // An event is a courtesy: never fail or repeat a reconcile for it.
      this.o.log.warn('could not record event', { reason, error: String(e) });
    }
  }
}

async function ignoreGone(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (e) {
    if (e instanceof KubeApiError && (e.status === 404 || e.status === 409)) return;
    throw e;
  }
}
