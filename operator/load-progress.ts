// Load progress, gathered from the ranks themselves (thin I/O of the gather step, STYLE 4). Rank pods
// run without an API token (least privilege), so they cannot write it onto their pods; instead every
// rank exposes `shardserve_load_bytes_done` / `shardserve_load_bytes_total` on `/metrics` of its HTTP
// port, and the operator reads them while a rank is loading. Any failure (refused, slow, garbled)
// only means "unknown": it never fails a reconcile.

export type LoadProgress = { loaded: number; total: number };

/** GET `url`; resolves the body of a 200 answer, rejects on anything else or after `deadlineMs`. */
export type HttpGet = (url: string, deadlineMs: number) => Promise<string>;

/** A rank's /metrics is a few KiB; anything far bigger is not one (and must not bloat the operator). */
export const MAX_METRICS_BYTES = 1024 * 1024;

export const fetchText: HttpGet = async (url, deadlineMs) => {
  const res = await fetch(url, { signal: AbortSignal.timeout(deadlineMs), redirect: 'error' });
  if (res.status !== 200 || !res.body) {
    await res.body?.cancel();
    throw new Error(`${url}: HTTP ${res.status}`);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    size += chunk.byteLength;
    if (size > MAX_METRICS_BYTES) throw new Error(`${url}: answer larger than ${MAX_METRICS_BYTES} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
};

const LOADED_METRIC = 'shardserve_load_bytes_done';
const TOTAL_METRIC = 'shardserve_load_bytes_total';

/** The two load gauges from a Prometheus text exposition; undefined unless both are sane numbers. */
export function parseLoadProgress(text: string): LoadProgress | undefined {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    // `name{labels} value [timestamp]`; label values may hold spaces, so split after the closing brace.
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line.trim());
    if (!m || (m[1] !== LOADED_METRIC && m[1] !== TOTAL_METRIC) || values.has(m[1])) continue;
    values.set(m[1], Number(m[3]));
  }
  const loaded = values.get(LOADED_METRIC);
  const total = values.get(TOTAL_METRIC);
  const sane = (n: number | undefined): n is number => n !== undefined && Number.isFinite(n) && n >= 0 && n <= Number.MAX_SAFE_INTEGER;
  if (!sane(loaded) || !sane(total) || loaded > total) return undefined;
  return { loaded: Math.floor(loaded), total: Math.floor(total) };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type PodLike = { metadata: { name: string; uid?: string; deletionTimestamp?: any }; status?: any };

const isReady = (p: PodLike) => (p.status?.conditions ?? []).some((c: { type: string; status: string }) => c.type === 'Ready' && c.status === 'True');

/** A rank that runs, has an address and is not Ready yet: it may be loading, so it is worth asking. */
export function isLoadingCandidate(p: PodLike): boolean {
  return p.status?.phase === 'Running' && typeof p.status?.podIP === 'string' && p.status.podIP !== '' && !isReady(p) && !p.metadata.deletionTimestamp;
}

export type LoadProgressGathererOptions = {
  get?: HttpGet;
  /** Per request (default 1 s). */
  deadlineMs?: number;
  /** Requests in flight at once across every reconcile (default 8). */
  concurrency?: number;
};

/**
 * Asks loading ranks for their progress and remembers the last answer per pod (by uid), so a rank
 * that became Ready still counts its slice, and one failed probe does not make progress jump back.
 */
export class LoadProgressGatherer {
  private readonly get: HttpGet;
  private readonly deadlineMs: number;
  private readonly concurrency: number;
  private inFlight = 0;
  private readonly waiters: (() => void)[] = [];
  /** resource key → pod uid → last progress that pod reported. */
  private readonly known = new Map<string, Map<string, LoadProgress>>();

  constructor(o: LoadProgressGathererOptions = {}) {
    this.get = o.get ?? fetchText;
    this.deadlineMs = o.deadlineMs ?? 1000;
    this.concurrency = Math.max(1, o.concurrency ?? 8);
  }

  /**
   * Progress of the given pods of one resource (pod name → progress), for the ones whose progress is
   * known: loading candidates are asked now, the others keep what they last reported.
   */
  async gather(resourceKey: string, pods: PodLike[], httpPort: number): Promise<Map<string, LoadProgress>> {
    const before = this.known.get(resourceKey) ?? new Map<string, LoadProgress>();
    const after = new Map<string, LoadProgress>();
    const uidOf = (p: PodLike) => p.metadata.uid ?? p.metadata.name;
    await Promise.all(
      pods.map(async (p) => {
        const uid = uidOf(p);
        const fresh = isLoadingCandidate(p) ? await this.ask(p.status.podIP, httpPort) : undefined;
        const progress = fresh ?? before.get(uid);
        if (progress) after.set(uid, progress);
      }),
    );
    // Only pods that still exist are remembered.
    if (after.size) this.known.set(resourceKey, after);
    else this.known.delete(resourceKey);
    const byName = new Map<string, LoadProgress>();
    for (const p of pods) {
      const progress = after.get(uidOf(p));
      if (progress) byName.set(p.metadata.name, progress);
    }
    return byName;
  }

  /** The resource is gone: drop what we remember of its pods. */
  forget(resourceKey: string): void {
    this.known.delete(resourceKey);
  }

  private async ask(ip: string, port: number): Promise<LoadProgress | undefined> {
    const host = ip.includes(':') ? `[${ip}]` : ip;
    await this.slot();
    try {
      return parseLoadProgress(await this.get(`http://${host}:${port}/metrics`, this.deadlineMs));
    } catch {
      return undefined;
    } finally {
      this.release();
    }
  }

  private async slot(): Promise<void> {
    while (this.inFlight >= this.concurrency) await new Promise<void>((r) => this.waiters.push(r));
    this.inFlight++;
  }

  private release(): void {
    this.inFlight--;
    this.waiters.shift()?.();
  }
}
