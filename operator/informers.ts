// Informers (list+watch caches, listwatch.ts) for the resource and every owned kind, per watched
// namespace (or cluster-wide). An informer that stops on an error is restarted with backoff; its
// health is what /healthz reports.
import { GROUP, PLURAL, VERSION } from './api/schema.js';
import { LABEL_MANAGED_BY, MANAGED_BY } from './builders.js';
import type { KubeApi } from './kube.js';
import { ListWatch, type KubeObject } from './listwatch.js';

export type KubernetesObject = KubeObject;

export type KindName = 'DistributedInference' | 'StatefulSet' | 'Pod' | 'Service' | 'ConfigMap' | 'EndpointSlice';

const KINDS: { kind: KindName; prefix: string; plural: string; owned: boolean }[] = [
  { kind: 'DistributedInference', prefix: `/apis/${GROUP}/${VERSION}`, plural: PLURAL, owned: false },
  { kind: 'StatefulSet', prefix: '/apis/apps/v1', plural: 'statefulsets', owned: true },
  { kind: 'Pod', prefix: '/api/v1', plural: 'pods', owned: true },
  { kind: 'Service', prefix: '/api/v1', plural: 'services', owned: true },
  { kind: 'ConfigMap', prefix: '/api/v1', plural: 'configmaps', owned: true },
  { kind: 'EndpointSlice', prefix: '/apis/discovery.k8s.io/v1', plural: 'endpointslices', owned: true },
];


type Entry = {
  kind: KindName;
  namespace?: string;
  informer: ListWatch;
  healthy: boolean;
  synced: boolean;
  backoffMs: number;
  lastError?: string;
  timer?: NodeJS.Timeout;
};

export type InformerEvents = { onChange: (kind: KindName, obj: KubernetesObject) => void; onError: (kind: KindName, namespace: string | undefined, err: unknown) => void };

export class InformerSet {
  private readonly entries: Entry[] = [];
  private stopped = false;

  constructor(
    api: KubeApi,
    namespaces: string[] | 'all',
    private readonly events: InformerEvents,
  ) {
    const scopes: (string | undefined)[] = namespaces === 'all' ? [undefined] : namespaces;
    const selector = `${LABEL_MANAGED_BY}=${MANAGED_BY}`;
    for (const k of KINDS) {
      for (const ns of scopes) {
        const path = `${k.prefix}${ns ? `/namespaces/${ns}` : ''}/${k.plural}`;
        const labelSelector = k.owned ? selector : undefined;
        const entry = { kind: k.kind, namespace: ns, healthy: false, synced: false, backoffMs: 500 } as Entry;
        entry.informer = new ListWatch(api, path, labelSelector, {
          onChange: (obj) => events.onChange(k.kind, obj),
          onError: (err) => {
            entry.healthy = false;
            entry.lastError = err instanceof Error ? err.message : String(err);
            events.onError(k.kind, ns, err);
            this.restartLater(entry);
          },
        });
        this.entries.push(entry);
      }
    }
  }

  private restartLater(e: Entry): void {
    if (this.stopped || e.timer) return;
    const delay = e.backoffMs;
    e.backoffMs = Math.min(e.backoffMs * 2, 30_000);
    e.timer = setTimeout(() => {
      e.timer = undefined;
      if (this.stopped) return;
      e.informer.start().then(
        () => {
          e.synced = true;
          e.healthy = true;
          e.lastError = undefined;
          e.backoffMs = 500;
        },
        () => this.restartLater(e),
      );
    }, delay);
  }

  /** Starts every informer; resolves when each has listed once (its cache is filled). */
  async start(deadlineMs = 60_000): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    await Promise.all(
      this.entries.map(async (e) => {
        for (;;) {
          try {
            await e.informer.start();
            e.synced = true;
            e.healthy = true;
            e.lastError = undefined;
            return;
          } catch (err) {
            e.lastError = err instanceof Error ? err.message : String(err);
            if (Date.now() > deadline) throw new Error(`informer for ${e.kind}${e.namespace ? ` in ${e.namespace}` : ''} did not sync within ${deadlineMs} ms: ${e.lastError}`);
            await new Promise((r) => setTimeout(r, Math.min(e.backoffMs, deadline - Date.now())));
            e.backoffMs = Math.min(e.backoffMs * 2, 30_000);
          }
        }
      }),
    );
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const e of this.entries) {
      if (e.timer) clearTimeout(e.timer);
      e.informer.stop();
    }
  }

  health(): { ok: boolean; informers: { kind: string; namespace: string; healthy: boolean; synced: boolean; lastError?: string }[] } {
    const informers = this.entries.map((e) => ({ kind: e.kind, namespace: e.namespace ?? '*', healthy: e.healthy, synced: e.synced, ...(e.lastError ? { lastError: e.lastError } : {}) }));
    return { ok: informers.every((i) => i.healthy), informers };
  }

  synced(): boolean {
    return this.entries.every((e) => e.synced);
  }

  /** Objects of a kind in a namespace, from the caches. */
  list(kind: KindName, namespace: string): KubernetesObject[] {
    return this.entries.filter((e) => e.kind === kind && (e.namespace === undefined || e.namespace === namespace)).flatMap((e) => e.informer.list(namespace));
  }

  get(kind: KindName, namespace: string, name: string): KubernetesObject | undefined {
    for (const e of this.entries) {
      if (e.kind !== kind || (e.namespace !== undefined && e.namespace !== namespace)) continue;
      const o = e.informer.get(namespace, name);
      if (o) return o;
    }
    return undefined;
  }

  /** Every DistributedInference key (`namespace/name`) in the caches (the periodic resync). */
  keys(): string[] {
    return this.entries.filter((e) => e.kind === 'DistributedInference').flatMap((e) => e.informer.list().map((o) => `${o.metadata!.namespace}/${o.metadata!.name}`));
  }
}
