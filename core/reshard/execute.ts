import type { CheckpointIndex, TensorEntry } from '../checkpoint/types.js';
import { open, type FileHandle } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { ShardserveError } from '../errors.js';
import type { ReadPlan, TensorPlan } from '../plan/planner.js';
import { type CopyOp, forEachRun, runCount, sourceSpan, tensorRunToFile } from '../plan/runs.js';
import { readRanges } from '../storage/ranged-read.js';

export interface ExecuteOptions {
  /** Reads in flight per source file (default 4). */
  concurrency?: number;
  /** Gap (bytes) below which two reads of one file become one request (default 0 for local files, 64 KiB for remote ones). */
  coalesceGap?: number;
  /** Destination tensors are filled in batches of about this many bytes (default 64 MiB), so memory stays near one batch. */
  batchBytes?: number;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  signal?: AbortSignal;
  /**
   * Local plain files are read with positional reads straight into the destination tensors (no
   * intermediate buffers) instead of through readRanges. Default true.
   */
  directLocal?: boolean;
}

export interface ExecuteStats {
  /** Bytes the plan asked for. */
  readBytes: number;
  /** Bytes actually fetched from the sources (includes coalescing gaps). */
  bytesTransferred: number;
  requests: number;
}

/** One read of a source file and where its bytes go. */
interface ReadUnit {
  fileOffset: number;
  length: number;
  scatter(bytes: Uint8Array): void;
  /** Set when the bytes land contiguously in one destination tensor: a local read can go straight there. */
  direct?: { dst: Uint8Array; offset: number };
}

/** Reads of at most this many bytes each, so a large piece never sits in memory twice. */
const UNIT_BYTES = 8 * 1024 * 1024;

/**
 * True when the runs of `op`, in visiting order, tile its source span densely: run j starts at
 * srcOffset + j × runBytes (C-order strides of whole rows). Then a run's place follows from its number.
 */
export function tilesDensely(op: CopyOp): boolean {
  let stride = op.runBytes;
  for (let d = op.counts.length - 1; d >= 0; d--) {
    if (op.srcStrides[d] !== stride) return false;
    stride *= op.counts[d];
  }
  return true;
}

/**
 * Copies the bytes of source-tensor stretch [lo, lo + bytes.length) of a densely tiling copy into
 * `out`, run by run: no per-run closures or arrays, one memcpy per (part of a) run.
 */
export function scatterDense(op: CopyOp, lo: number, bytes: Uint8Array, out: Uint8Array): void {
  const rb = op.runBytes;
  const hi = lo + bytes.length;
  const depth = op.counts.length;
  let j = Math.floor((lo - op.srcOffset) / rb);
  const end = Math.ceil((hi - op.srcOffset) / rb);
  // Multi-index of run j and its destination offset.
  const idx = new Array<number>(depth).fill(0);
  let dst = op.dstOffset;
  let rest = j;
  for (let d = depth - 1; d >= 0; d--) {
    idx[d] = rest % op.counts[d];
    rest = Math.floor(rest / op.counts[d]);
    dst += idx[d] * op.dstStrides[d];
  }
  const inner = depth - 1;
  for (; j < end; j++) {
    const src = op.srcOffset + j * rb;
    const a = src < lo ? lo : src;
    const z = src + rb > hi ? hi : src + rb;
    out.set(bytes.subarray(a - lo, z - lo), dst + (a - src));
    if (depth === 0) break;
    // Next run: step the innermost index, carrying outwards.
    let d = inner;
    dst += op.dstStrides[d];
    idx[d]++;
    while (idx[d] === op.counts[d]) {
      dst -= op.dstStrides[d] * op.counts[d];
      idx[d] = 0;
      d--;
      if (d < 0) return;
      dst += op.dstStrides[d];
      idx[d]++;
    }
  }
}

/**
 * The reads of one copy. When its runs tile a contiguous stretch of the source tensor (whole rows,
 * whole slices) the stretch is read in large units and scattered run by run; otherwise every run
 * is its own read.
 */
function readUnitsOf(op: CopyOp, entry: TensorEntry, dst: Uint8Array, units: ReadUnit[]): void {
  const runs = runCount(op);
  if (runs === 0 || op.runBytes === 0) return;
  const span = sourceSpan(op);
  const out = dst;
  if (span === runs * op.runBytes) {
    const dense = tilesDensely(op);
    for (let lo = op.srcOffset; lo < op.srcOffset + span; lo += UNIT_BYTES) {
      const hi = Math.min(lo + UNIT_BYTES, op.srcOffset + span);
      tensorRunToFile(entry, lo, hi - lo, (fileOffset, tensorOffset, length) => {
        const contiguous = op.counts.length === 0;
        units.push({
          fileOffset,
          length,
          direct: contiguous ? { dst: out, offset: op.dstOffset + (tensorOffset - op.srcOffset) } : undefined,
          scatter: dense
            ? (bytes) => scatterDense(op, tensorOffset, bytes, out)
            : (bytes) => {
                const end = tensorOffset + length;
                forEachRun(op, (src, dstOffset, len) => {
                  const a = Math.max(src, tensorOffset);
                  const z = Math.min(src + len, end);
                  if (a < z) out.set(bytes.subarray(a - tensorOffset, z - tensorOffset), dstOffset + (a - src));
                });
              },
        });
      });
    }
    return;
  }
  forEachRun(op, (src, dstOffset, len) =>
    tensorRunToFile(entry, src, len, (fileOffset, tensorOffset, length) =>
      units.push({ fileOffset, length, direct: { dst: out, offset: dstOffset + (tensorOffset - src) }, scatter: (bytes) => out.set(bytes, dstOffset + (tensorOffset - src)) })));
}

/**
 * The local fast path: a window of positional reads into the destination (or into one reused scratch
 * buffer per worker when the bytes scatter; the scatter of one read overlaps the other workers'
 * reads). Returns false when `uri` is not a local file of that size.
 */
async function readLocalDirect(uri: string, size: number, units: ReadUnit[], concurrency: number, stats: ExecuteStats): Promise<boolean> {
  if (isRemote(uri)) return false;
  const path = uri.startsWith('file://') ? fileURLToPath(uri) : uri;
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
    if ((await handle.stat()).size !== size) {
      await handle.close();
      return false;
    }
  } catch {
    return false;
  }
  try {
    let next = 0;
    const worker = async () => {
      // A plain Uint8Array (not a Buffer): its subarray() is the cheap built-in one.
      let scratch: Uint8Array | undefined;
      while (next < units.length) {
        const u = units[next++];
        let target: Uint8Array;
        let at: number;
        if (u.direct) {
          target = u.direct.dst;
          at = u.direct.offset;
        } else {
          if (!scratch || scratch.length < u.length) scratch = new Uint8Array(Math.max(u.length, 1 << 20));
          target = scratch;
          at = 0;
        }
        let done = 0;
        while (done < u.length) {
          const { bytesRead } = await handle.read(target, at + done, u.length - done, u.fileOffset + done);
          if (bytesRead === 0) throw new ShardserveError('ShortRead', `${uri}: file ended at ${u.fileOffset + done}, expected ${u.fileOffset + u.length} bytes`, { file: uri });
          done += bytesRead;
        }
        stats.requests++;
        if (!u.direct) u.scatter(target.subarray(0, u.length));
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, units.length) }, worker));
    const bytes = units.reduce((s, u) => s + u.length, 0);
    stats.readBytes += bytes;
    stats.bytesTransferred += bytes;
    return true;
  } finally {
    await handle.close();
  }
}

function isRemote(uri: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(uri) && !uri.startsWith('file://');
}

/**
 * Performs a read plan: fills each destination tensor from exactly the planned byte ranges of the
 * source files and hands it to `consume` (in plan order). Only one batch of destination tensors is
 * held at a time, plus the reads in flight.
 */
export async function executePlan(
  plan: ReadPlan,
  sources: Map<number, CheckpointIndex>,
  consume: (tensor: TensorPlan, data: Uint8Array) => Promise<void> | void,
  opts: ExecuteOptions = {},
): Promise<ExecuteStats> {
  const batchBytes = opts.batchBytes ?? 64 * 1024 * 1024;
  const stats: ExecuteStats = { readBytes: 0, bytesTransferred: 0, requests: 0 };
  let done = 0;
  opts.onProgress?.(0, plan.sliceBytes);
  let i = 0;
  while (i < plan.tensors.length) {
    const batch: TensorPlan[] = [];
    let bytes = 0;
    while (i < plan.tensors.length && (batch.length === 0 || bytes + plan.tensors[i].byteLength <= batchBytes)) {
      bytes += plan.tensors[i].byteLength;
      batch.push(plan.tensors[i++]);
    }
    // Every byte of a destination tensor is written by exactly one copy (the plan covers its box), so no zero-fill.
    const buffers = batch.map((t) => {
      const b = Buffer.allocUnsafeSlow(t.byteLength);
      return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    });
    const unitsByRank = new Map<number, ReadUnit[]>();
    batch.forEach((t, bi) => {
      for (const op of t.copies) {
        const index = sources.get(op.rank);
        const entry = index?.tensors.get(t.name);
        if (!index || !entry) throw new ShardserveError('Internal', `parameter '${t.name}': the plan reads rank ${op.rank}, which was not opened`, { param: t.name });
        const units = unitsByRank.get(op.rank) ?? [];
        unitsByRank.set(op.rank, units);
        readUnitsOf(op, entry, buffers[bi], units);
      }
    });
    await Promise.all([...unitsByRank.entries()].map(async ([rank, units]) => {
      const index = sources.get(rank)!;
      const source = index.source;
      units.sort((a, b) => a.fileOffset - b.fileOffset);
      if (opts.directLocal !== false && index.encryption === 'none' && (await readLocalDirect(source.uri, source.size, units, opts.concurrency ?? 4, stats))) return;
      // Units never overlap (distinct pieces are disjoint), so a range's offset identifies its unit.
      const byOffset = new Map(units.map((u) => [u.fileOffset, u]));
      const result = await readRanges(
        source,
        units.map((u) => ({ offset: u.fileOffset, length: u.length })),
        // Groups no longer than one part: every unit then arrives as a view of one response body
        // (readRanges copies a range only when it straddles parts), and is copied once, into its tensor.
        { concurrency: opts.concurrency ?? 4, coalesceGap: opts.coalesceGap ?? (isRemote(source.uri) ? 64 * 1024 : 0), maxCoalescedBytes: UNIT_BYTES, partSize: UNIT_BYTES, signal: opts.signal },
        (range, data) => byOffset.get(range.offset)!.scatter(data),
      );
      stats.readBytes += units.reduce((s, u) => s + u.length, 0);
      stats.bytesTransferred += result.bytesTransferred;
      stats.requests += result.requests;
    }));
    for (let bi = 0; bi < batch.length; bi++) {
      await consume(batch[bi], buffers[bi]);
      done += batch[bi].byteLength;
      opts.onProgress?.(done, plan.sliceBytes);
    }
  }
  return stats;
}
