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
  const pending = groups.map((g) => ({ left: 0, buf: null as Uint8Array | null, chunks: [] as { at: number; bytes: Uint8Array }[] }));
  for (const p of parts) pending[p.group].left++;

  let bytesTransferred = 0;
  let requests = 0;
  let next = 0;
  let failed: unknown;
  const readPart = (p: Part) =>
    withRetry(async () => {
      if (opts.signal?.aborted) throw opts.signal.reason;
      return p.length === 0 ? new Uint8Array(0) : source.read(p.offset, p.length);
    }, { ...opts.retry, signal: opts.signal });

  const worker = async () => {
    while (failed === undefined && next < parts.length) {
      const p = parts[next++];
      requests++;
      const bytes = await readPart(p);
      if (bytes.length !== p.length) {
        throw new ShardserveError('ShortRead', `${source.uri}: asked for ${p.length} bytes at ${p.offset}, got ${bytes.length}`, { file: source.uri });
      }
      bytesTransferred += p.length;
      const st = pending[p.group];
      st.chunks.push({ at: p.offset, bytes });
      if (--st.left > 0) continue;
      const g = groups[p.group];
      let buf: Uint8Array;
      if (st.chunks.length === 1) buf = st.chunks[0].bytes;
      else {
        buf = new Uint8Array(g.end - g.offset);
        for (const c of st.chunks) buf.set(c.bytes, c.at - g.offset);
      }
      st.chunks = [];
      for (const m of g.members) {
        const r = ranges[m];
        await sink(r, buf.subarray(r.offset - g.offset, r.offset - g.offset + r.length));
      }
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
