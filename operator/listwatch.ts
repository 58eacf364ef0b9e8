// An informer: list once, then watch from the list's resourceVersion, keeping a cache of the
// objects and telling a listener what changed. A stream the server ends is resumed from the last
// resourceVersion; 410 Gone relists; a transport or API error stops it (the InformerSet restarts
// it with backoff and reports it in /healthz).
import { KubeApiError, type Json, type KubeApi } from './kube.js';

export type KubeObject = { metadata: { name: string; namespace?: string; resourceVersion?: string; [k: string]: Json }; [k: string]: Json };

export type ListWatchEvents = {
  onChange: (obj: KubeObject) => void;
  onError: (err: unknown) => void;
};

const key = (o: KubeObject) => `${o.metadata.namespace ?? ''}/${o.metadata.name}`;

export class ListWatch {
  private readonly objects = new Map<string, KubeObject>();
  private resourceVersion = '';
  private abort?: AbortController;
  private running = false;

  constructor(
    private readonly api: KubeApi,
    private readonly path: string,
    private readonly labelSelector: string | undefined,
    private readonly events: ListWatchEvents,
  ) {}

  private query(extra: Record<string, string>): string {
    const q = new URLSearchParams(extra);
    if (this.labelSelector) q.set('labelSelector', this.labelSelector);
    return `${this.path}?${q.toString()}`;
  }

  private async relist(): Promise<void> {
    const list = await this.api.get(this.query({}));
    const seen = new Set<string>();
    for (const item of list.items ?? []) {
      const k = key(item);
      seen.add(k);
      const old = this.objects.get(k);
      this.objects.set(k, item);
      if (!old || old.metadata.resourceVersion !== item.metadata.resourceVersion) this.events.onChange(item);
    }
    for (const [k, old] of this.objects) {
      if (!seen.has(k)) {
        this.objects.delete(k);
        this.events.onChange(old);
      }
    }
    this.resourceVersion = list.metadata?.resourceVersion ?? '';
  }

  /** Lists (fills the cache), then keeps watching in the background. */
  async start(): Promise<void> {
    if (this.running) return;
    this.abort = new AbortController();
    await this.relist();
    this.running = true;
    void this.watchLoop(this.abort.signal);
  }

  private async watchLoop(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      let gone = false;
      try {
        await this.api.watch(
          this.query({ watch: '1', resourceVersion: this.resourceVersion, allowWatchBookmarks: 'true', timeoutSeconds: String(240 + Math.floor(Math.random() * 120)) }),
          (ev) => {
            if (ev.type === 'ERROR') {
              if (ev.object?.code === 410) gone = true;
              else throw new KubeApiError(ev.object?.code ?? 0, ev.object?.reason ?? '', `watch ${this.path}: ${ev.object?.message}`);
              return;
            }
            const obj = ev.object as KubeObject;
            if (obj?.metadata?.resourceVersion) this.resourceVersion = obj.metadata.resourceVersion;
            if (ev.type === 'BOOKMARK') return;
            if (ev.type === 'DELETED') this.objects.delete(key(obj));
            else this.objects.set(key(obj), obj);
            this.events.onChange(obj);
          },
          signal,
        );
        if (gone && !signal.aborted) await this.relist();
      } catch (e) {
        if (signal.aborted) break;
        this.running = false;
        this.events.onError(e);
        return;
      }
    }
    this.running = false;
  }

  stop(): void {
    this.abort?.abort();
    this.running = false;
  }

  get(namespace: string, name: string): KubeObject | undefined {
    return this.objects.get(`${namespace}/${name}`);
  }

  list(namespace?: string): KubeObject[] {
    const all = [...this.objects.values()];
    return namespace === undefined ? all : all.filter((o) => o.metadata.namespace === namespace);
  }
}
