// A level-triggered keyed work queue (STYLE 3): events only add `namespace/name`; a key waiting
// twice is queued once; a key is never worked on by two workers at once (a key added while it is
// being worked on runs again right after); failures come back with per-key exponential backoff.
export type QueueOptions = {
  workers: number;
  handle: (key: string) => Promise<void>;
  onError?: (key: string, err: unknown) => void;
  baseBackoffMs?: number;
  maxBackoffMs?: number;
};

export class WorkQueue {
  private readonly waiting: string[] = [];
  private readonly queued = new Set<string>();
  private readonly active = new Set<string>();
  private readonly dirty = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private running = 0;
  private stopped = false;
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly opts: QueueOptions) {}

  /** Keys waiting or being worked on. */
  get depth(): number {
    return this.queued.size + this.active.size;
  }

  add(key: string): void {
    if (this.stopped) return;
    if (this.active.has(key)) {
      this.dirty.add(key);
      return;
    }
    if (this.queued.has(key)) return;
    this.queued.add(key);
    this.waiting.push(key);
    this.pump();
  }

  addAfter(key: string, ms: number): void {
    if (this.stopped || this.timers.has(key)) return;
    const t = setTimeout(() => {
      this.timers.delete(key);
      this.add(key);
    }, ms);
    t.unref();
    this.timers.set(key, t);
  }

  /** Drops the backoff of a key (after a success). */
  forget(key: string): void {
    this.failures.delete(key);
  }

  private pump(): void {
    while (!this.stopped && this.running < this.opts.workers && this.waiting.length) {
      const key = this.waiting.shift()!;
      this.queued.delete(key);
      this.active.add(key);
      this.running++;
      void this.work(key);
    }
  }

  private async work(key: string): Promise<void> {
    try {
      await this.opts.handle(key);
      this.failures.delete(key);
    } catch (e) {
      const n = (this.failures.get(key) ?? 0) + 1;
      this.failures.set(key, n);
      this.opts.onError?.(key, e);
      const base = this.opts.baseBackoffMs ?? 200;
      this.addAfter(key, Math.min(base * 2 ** (n - 1), this.opts.maxBackoffMs ?? 60_000));
    } finally {
      this.active.delete(key);
      this.running--;
      if (this.dirty.delete(key)) this.add(key);
      this.pump();
      if (this.depth === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Resolves when nothing is waiting or running (tests and shutdown). */
  idle(): Promise<void> {
    return this.depth === 0 ? Promise.resolve() : new Promise((r) => this.idleWaiters.push(r));
  }

  /** Stops taking work; resolves once the running workers finish. */
  async shutdown(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.waiting.length = 0;
    this.queued.clear();
    while (this.running > 0) await new Promise((r) => setTimeout(r, 20));
  }
}
