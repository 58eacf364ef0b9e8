import type { ByteRange } from '../checkpoint/types.js';
import { ShardserveError } from '../errors.js';
import { withRetry, type RetryOptions } from './retry.js';
import type { ByteSource } from './source.js';

export interface ReadRangesOptions {
  /** Requests in flight at once (default 8). */
  concurrency?: number;
  /**
   * Two ranges whose gap is at most this many bytes are fetched by one request (the gap is read and
   * thrown away). Default 64 KiB: below that, one more round trip costs more than the bytes.
   * 0 merges only touching/overlapping ranges; a negative value disables coalescing entirely.
   */
  coalesceGap?: number;
  /** A coalesced group is never grown past this size (default 16 MiB), so memory stays bounded. */
  maxCoalescedBytes?: number;
  /** A single range longer than this is fetched as several parallel part requests (default 8 MiB). */
  partSize?: number;
  signal?: AbortSignal;
  /** Retries of failures the source reports as transient (the remote sources retry on their own first). */
  retry?: RetryOptions;
}

export interface ReadRangesResult {
  /** Bytes fetched from the source, including coalescing gaps. */
  bytesTransferred: number;
  /** Requests (source reads) made, retries excluded. */
  requests: number;
  /** Bytes the caller asked for (overlaps counted once). */
  bytesRequested: number;
  /** bytesTransferred - bytesRequested: what coalescing cost. */
  extraBytes: number;
}

const EMPTY = new Uint8Array(0);

interface Group {
  offset: number;
  end: number;
  /** Indices into the caller's ranges. */
  members: number[];
}

/**
 * Read `ranges` of `source` with a bounded window of concurrent requests, coalescing near-adjacent
 * ranges when that saves round trips. The sink is called once per asked range with exactly its bytes
 * (in completion order, not necessarily input order); it may be async, and it is awaited inside the
 * window, so at most `concurrency` groups are held in memory.
 */
export async function readRanges(
  source: ByteSource,
  ranges: ByteRange[],
  opts: ReadRangesOptions,
  sink: (range: ByteRange, bytes: Uint8Array) => void | Promise<void>,
): Promise<ReadRangesResult> {
  const concurrency = Math.max(1, Math.floor(opts.concurrency ?? 8));
  const gap = opts.coalesceGap ?? 64 * 1024;
  const maxGroup = opts.maxCoalescedBytes ?? 16 * 1024 * 1024;
  const partSize = Math.max(1, opts.partSize ?? 8 * 1024 * 1024);
  for (const r of ranges) {
    if (!Number.isSafeInteger(r.offset) || !Number.isSafeInteger(r.length) || r.offset < 0 || r.length < 0 || r.offset + r.length > source.size) {
      throw new ShardserveError('OutOfRange', `${source.uri}: range of ${r.length} bytes at ${r.offset} is outside the object (size ${source.size})`, { file: source.uri });
    }
  }
  const groups = planGroups(ranges, gap, maxGroup);
  const bytesRequested = unionLength(ranges);

  // Each group becomes one request, or several part requests if it is long; parts of one group run
  // in parallel through the same window and the group is delivered when its last part lands.
  type Part = { group: number; offset: number; length: number };
  const parts: Part[] = [];
  groups.forEach((g, gi) => {
    const len = g.end - g.offset;
    if (len === 0) parts.push({ group: gi, offset: g.offset, length: 0 });
    for (let o = 0; o < len; o += partSize) parts.push({ group: gi, offset: g.offset + o, length: Math.min(partSize, len - o) });
  });
  // Parts of a group are indexed by their position; a member range is delivered as soon as every
  // part it overlaps has arrived: a view into the part when it lies inside one (no copy), else a
  // copy of just that range assembled from its parts.
  const partsOf = groups.map(() => [] as { offset: number; bytes: Uint8Array | null }[]);
  const partIndex: number[] = [];
  for (const p of parts) {
    partIndex.push(partsOf[p.group].length);
    partsOf[p.group].push({ offset: p.offset, bytes: null });
  }
  const memberSpan = (gi: number, m: number) => {
    const r = ranges[m];
    const g = groups[gi];
    const first = Math.floor((r.offset - g.offset) / partSize);
    const last = r.length === 0 ? first : Math.floor((r.offset + r.length - 1 - g.offset) / partSize);
    const n = partsOf[gi].length - 1;
    return { first: Math.min(first, n), last: Math.min(last, n) };
  };
  // How many undelivered members still need each part (a part's buffer is dropped at zero).
  const remaining = groups.map((g, gi) => {
    const counts = partsOf[gi].map(() => 0);
    for (const m of g.members) {
      const { first, last } = memberSpan(gi, m);
      for (let k = first; k <= last; k++) counts[k]++;
    }
    return counts;
  });
  // Members of a group are sorted by offset and delivered in that order through a cursor, which is
  // advanced before the sink is awaited, so concurrent workers never deliver one member twice.
  const cursor = groups.map(() => 0);

  let bytesTransferred = 0;
  let requests = 0;
  let next = 0;
  let failed: unknown;
  const readPart = (p: Part) =>
    withRetry(async () => {
      if (opts.signal?.aborted) throw opts.signal.reason;
      return p.length === 0 ? new Uint8Array(0) : source.read(p.offset, p.length);
    }, { ...opts.retry, signal: opts.signal });

  const deliverReady = async (gi: number) => {
    const g = groups[gi];
    const ps = partsOf[gi];
    while (cursor[gi] < g.members.length) {
      const m = g.members[cursor[gi]];
      const { first, last } = memberSpan(gi, m);
      for (let q = first; q <= last; q++) if (ps[q].bytes === null) return;
      cursor[gi]++;
      const r = ranges[m];
      let view: Uint8Array;
      if (first === last) {
        const b = ps[first].bytes!;
        view = b.subarray(r.offset - ps[first].offset, r.offset - ps[first].offset + r.length);
      } else {
        view = new Uint8Array(r.length);
        for (let q = first; q <= last; q++) {
          const part = ps[q];
          const a = Math.max(r.offset, part.offset);
          const z = Math.min(r.offset + r.length, part.offset + part.bytes!.length);
          if (a < z) view.set(part.bytes!.subarray(a - part.offset, z - part.offset), a - r.offset);
        }
      }
      for (let q = first; q <= last; q++) if (--remaining[gi][q] === 0) ps[q].bytes = EMPTY;
      await sink(r, view);
    }
  };

  const worker = async () => {
    while (failed === undefined && next < parts.length) {
      const pi = next++;
      const p = parts[pi];
      requests++;
      const bytes = await readPart(p);
      if (bytes.length !== p.length) {
        throw new ShardserveError('ShortRead', `${source.uri}: asked for ${p.length} bytes at ${p.offset}, got ${bytes.length}`, { file: source.uri });
      }
      bytesTransferred += p.length;
      partsOf[p.group][partIndex[pi]].bytes = bytes;
      await deliverReady(p.group);
    }
  };
  const workers = Array.from({ length: Math.min(concurrency, parts.length) }, () =>
    worker().catch((e) => {
      if (failed === undefined) failed = e;
    }),
  );
  await Promise.all(workers);
  if (failed !== undefined) throw failed;
  return { bytesTransferred, requests, bytesRequested, extraBytes: bytesTransferred - bytesRequested };
}

/** Sort ranges and merge those closer than `gap` (never growing a group beyond `maxGroup`). */
export function planGroups(ranges: ByteRange[], gap: number, maxGroup: number): Group[] {
  const order = ranges.map((_, i) => i).sort((a, b) => ranges[a].offset - ranges[b].offset || ranges[a].length - ranges[b].length);
  const groups: Group[] = [];
  for (const i of order) {
    const r = ranges[i];
    const end = r.offset + r.length;
    const last = groups[groups.length - 1];
    // Overlapping ranges must share a group (each byte is fetched once); near ones join when allowed.
    if (last && (r.offset < last.end || (gap >= 0 && r.offset - last.end <= gap && Math.max(end, last.end) - last.offset <= maxGroup))) {
      last.end = Math.max(last.end, end);
      last.members.push(i);
      continue;
    }
    groups.push({ offset: r.offset, end, members: [i] });
  }
  return groups;
}

function unionLength(ranges: ByteRange[]): number {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  let total = 0;
  let curStart = -1;
  let curEnd = -1;
  for (const r of sorted) {
    if (r.length === 0) continue;
    if (r.offset > curEnd) {
      total += curEnd - curStart;
      curStart = r.offset;
      curEnd = r.offset + r.length;
    } else curEnd = Math.max(curEnd, r.offset + r.length);
  }
  return total + (curEnd - curStart);
}
