import type { CheckpointIndex, TensorEntry } from '../checkpoint/types.js';
import { open, type FileHandle } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { ShardserveError } from '../errors.js';
import type { ReadPlan, TensorPlan } from '../plan/planner.js';
import { type CopyOp, forEachRun, runCount, sourceSpan, tensorRunToFile } from '../plan/runs.js';
import { planGroups, readRanges } from '../storage/ranged-read.js';

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

/**
 * One read of a source file and where its bytes go. Offsets are in the batch buffer, which holds
 * every destination tensor of a batch (and, at its end, the scratch slots scattered reads land in).
 */
interface ReadUnit {
  fileOffset: number;
  length: number;
  /** Set when the bytes land contiguously in one tensor: the read goes straight to this offset. */
  at?: number;
  /**
   * Copies the unit's bytes to their places in the batch buffer `out`. `from` is either their
   * offset in `out` (a scratch slot: runs move with copyWithin, no view per run) or a buffer of
   * their own.
   */
  scatter(from: number | Uint8Array, out: Uint8Array): void;
  /**
   * Set when the bytes scatter in runs long enough for a vectored read: their places in `out`, in
   * file order, so a local file is read straight into them (no scratch slot, no second copy).
   */
  views?(out: Uint8Array): Uint8Array[];
}

/** Reads of at most this many bytes each, so a large piece never sits in memory twice. */
const UNIT_BYTES = 8 * 1024 * 1024;
/** Reads whose bytes scatter are at most this long: each lands in one of a few scratch slots. */
const SCATTER_UNIT_BYTES = 2 * 1024 * 1024;
/** Scratch slots per batch (shared by every file's readers). */
const SCRATCH_SLOTS = 8;
/**
 * Scattered runs at least this long are read with vectored reads straight into place; shorter ones
 * go through a scratch slot and are copied on the main thread. Measured on 2 cores, reading two
 * files' runs interleaved into one fresh buffer, read then copy one unit at a time: vectored reads
 * took 0.85x the time for 128-byte runs, 0.63x for 256 B and 0.60x for 768 B. In a whole load the
 * copies overlap other units' reads, and on 2 cores the wall time did not change consistently; what
 * changes is that the main thread no longer copies (busy 173-217 ms instead of 309-319 in bench:load).
 */
const VECTORED_MIN_RUN = 128;
/** Buffers per vectored read (Linux's IOV_MAX; libuv reads at most this many per call). */
const IOV_MAX = 1024;
/**
 * Local units of at most SMALL_UNIT bytes with at most SMALL_GAP bytes between them in the file (a
 * checkpoint of many small tensors: the gaps are record headers) are read together, up to
 * SMALL_GROUP bytes per read, into a scratch slot and moved into place: one read instead of one
 * per tensor. Measured on a TP-8 checkpoint of 4000 [64,64] F16 parameters a file (rank 1 of TP 4,
 * 8000 reads of 1 KiB): the reads took 232 ms one by one (a thread-pool round trip each). The gaps are
 * read too (within the pages the page cache reads anyway); ExecuteStats.bytesTransferred counts them.
 */
const SMALL_UNIT = 64 * 1024;
const SMALL_GAP = 4096;
const SMALL_GROUP = 1024 * 1024;
const groupable = (u: ReadUnit) => !u.views && u.length <= SMALL_UNIT;
/** Tensors start on this boundary in the batch buffer. */
const TENSOR_ALIGN = 64;
/** Largest batch buffer (tensors plus scratch); larger batches are split. */
const MAX_BATCH_BUFFER = 2 ** 31;
const align = (n: number) => Math.ceil(n / TENSOR_ALIGN) * TENSOR_ALIGN;

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
 * Visits, in source order, the runs of source-tensor stretch [lo, lo + length) of a densely tiling
 * copy: `visit(dst, rel, len)` with `dst` the run's (possibly clipped) destination offset relative to
 * the destination tensor and `rel` its offset within the stretch. No per-run arrays or views.
 */
function forEachDenseRun(op: CopyOp, lo: number, length: number, visit: (dst: number, rel: number, len: number) => void): void {
  const rb = op.runBytes;
  const hi = lo + length;
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
    visit(dst + (a - src), a - lo, z - a);
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
 * Copies the bytes of source-tensor stretch [lo, lo + length) of a densely tiling copy to the
 * destination tensor at `out[base..]`, run by run. The stretch is `from`: its offset in `out` (moved
 * with copyWithin) or a buffer of its own.
 */
export function scatterDense(op: CopyOp, lo: number, length: number, from: number | Uint8Array, out: Uint8Array, base: number): void {
  if (typeof from === 'number') forEachDenseRun(op, lo, length, (dst, rel, len) => out.copyWithin(base + dst, from + rel, from + rel + len));
  else forEachDenseRun(op, lo, length, (dst, rel, len) => out.set(from.subarray(rel, rel + len), base + dst));
}

/**
 * The places in `out[base..]` of the bytes of source-tensor stretch [lo, lo + length) of a densely
 * tiling copy, in source order: reading the stretch into these views (one vectored read) puts every
 * byte where scatterDense would.
 */
export function denseViews(op: CopyOp, lo: number, length: number, out: Uint8Array, base: number): Uint8Array[] {
  const views: Uint8Array[] = [];
  const at = out.byteOffset + base;
  forEachDenseRun(op, lo, length, (dst, _rel, len) => views.push(new Uint8Array(out.buffer, at + dst, len)));
  return views;
}

/**
 * The reads of one copy into the destination tensor at `out[base..]`. When its runs tile a
 * contiguous stretch of the source tensor (whole rows, whole slices) the stretch is read in large
 * units (straight into place when it is one run, else scattered run by run); otherwise every run is
 * its own read, straight into place.
 */
function readUnitsOf(op: CopyOp, entry: TensorEntry, base: number, units: ReadUnit[]): void {
  const runs = runCount(op);
  if (runs === 0 || op.runBytes === 0) return;
  const span = sourceSpan(op);
  if (span === runs * op.runBytes) {
    const contiguous = op.counts.length === 0;
    const dense = tilesDensely(op);
    const step = contiguous ? UNIT_BYTES : SCATTER_UNIT_BYTES;
    for (let lo = op.srcOffset; lo < op.srcOffset + span; lo += step) {
      const hi = Math.min(lo + step, op.srcOffset + span);
      tensorRunToFile(entry, lo, hi - lo, (fileOffset, tensorOffset, length) => {
        units.push({
          fileOffset,
          length,
          at: contiguous ? base + op.dstOffset + (tensorOffset - op.srcOffset) : undefined,
          views: dense && !contiguous && op.runBytes >= VECTORED_MIN_RUN ? (out) => denseViews(op, tensorOffset, length, out, base) : undefined,
          scatter: dense
            ? (from, out) => scatterDense(op, tensorOffset, length, from, out, base)
            : (from, out) => {
                const end = tensorOffset + length;
                forEachRun(op, (src, dstOffset, len) => {
                  const a = Math.max(src, tensorOffset);
                  const z = Math.min(src + len, end);
                  if (a >= z) return;
                  const to = base + dstOffset + (a - src);
                  if (typeof from === 'number') out.copyWithin(to, from + (a - tensorOffset), from + (z - tensorOffset));
                  else out.set(from.subarray(a - tensorOffset, z - tensorOffset), to);
                });
              },
        });
      });
    }
    return;
  }
  forEachRun(op, (src, dstOffset, len) =>
    tensorRunToFile(entry, src, len, (fileOffset, tensorOffset, length) => {
      const at = base + dstOffset + (tensorOffset - src);
      units.push({ fileOffset, length, at, scatter: (from, out) => (typeof from === 'number' ? out.copyWithin(at, from, from + length) : out.set(from, at)) });
    }));
}

/** Scratch slots at fixed offsets of the batch buffer, handed to one read at a time. */
class ScratchSlots {
  private readonly free: number[];
  private readonly waiting: ((at: number) => void)[] = [];
  constructor(start: number, count: number, size: number) {
    this.free = Array.from({ length: count }, (_, i) => start + i * size);
  }
  acquire(): Promise<number> | number {
    return this.free.pop() ?? new Promise((resolve) => this.waiting.push(resolve));
  }
  release(at: number): void {
    const next = this.waiting.shift();
    if (next) next(at);
    else this.free.push(at);
  }
}

/**
 * The local fast path: a window of positional reads straight into the batch buffer. Contiguous
 * bytes go into place; scattered runs of VECTORED_MIN_RUN or more go into place too, with vectored
 * reads; shorter scattered runs go into a scratch slot of it, from which they are moved (overlapping
 * the other reads). Returns false when `uri` is not a local file of that size.
 */
async function readLocalDirect(uri: string, size: number, units: ReadUnit[], all: Uint8Array, slots: ScratchSlots | undefined, slotBytes: number, concurrency: number, stats: ExecuteStats): Promise<boolean> {
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
    // Reads in file order: a unit, or a group of small units close together (see SMALL_UNIT).
    const small = units.filter(groupable);
    const reads = [
      ...planGroups(small.map((u) => ({ offset: u.fileOffset, length: u.length })), SMALL_GAP, slotBytes).map((g) => g.members.map((i) => small[i])),
      ...units.filter((u) => !groupable(u)).map((u) => [u]),
    ].sort((a, b) => a[0].fileOffset - b[0].fileOffset);
    let next = 0;
    const worker = async () => {
      while (next < reads.length) {
        const read = reads[next++];
        if (read.length > 1) {
          const start = read[0].fileOffset;
          const end = read[read.length - 1].fileOffset + read[read.length - 1].length;
          const slot = await slots!.acquire();
          try {
            await readFully(handle, all, slot, end - start, start, uri);
            for (const u of read) u.scatter(slot + (u.fileOffset - start), all);
          } finally {
            slots!.release(slot);
          }
          stats.requests++;
          stats.bytesTransferred += end - start;
          continue;
        }
        const u = read[0];
        stats.bytesTransferred += u.length;
        if (u.views) {
          await readvFully(handle, u.views(all), u.fileOffset, uri);
          stats.requests++;
          continue;
        }
        const slot = u.at === undefined ? await slots!.acquire() : undefined;
        try {
          await readFully(handle, all, u.at ?? slot!, u.length, u.fileOffset, uri);
          stats.requests++;
          if (slot !== undefined) u.scatter(slot, all);
        } finally {
          if (slot !== undefined) slots!.release(slot);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(concurrency, reads.length) }, worker));
    stats.readBytes += units.reduce((s, u) => s + u.length, 0);
    return true;
  } finally {
    await handle.close();
  }
}

/** Reads `length` file bytes from `position` into `into[at..]`, resuming after short reads. */
async function readFully(handle: FileHandle, into: Uint8Array, at: number, length: number, position: number, uri: string): Promise<void> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(into, at + done, length - done, position + done);
    if (bytesRead === 0) throw new ShardserveError('ShortRead', `${uri}: file ended at ${position + done}, expected ${position + length} bytes`, { file: uri });
    done += bytesRead;
  }
}

/** Reads consecutive file bytes from `position` into `views` in order, IOV_MAX views per call, resuming after short reads. */
async function readvFully(handle: FileHandle, views: Uint8Array[], position: number, uri: string): Promise<void> {
  let i = 0;
  while (i < views.length) {
    const batch = views.slice(i, i + IOV_MAX);
    const want = batch.reduce((s, v) => s + v.byteLength, 0);
    const { bytesRead } = await handle.readv(batch, position);
    if (bytesRead === 0) throw new ShardserveError('ShortRead', `${uri}: file ended at ${position}, expected ${position + want} bytes`, { file: uri });
    position += bytesRead;
    if (bytesRead === want) {
      i += batch.length;
      continue;
    }
    let left = bytesRead;
    while (left >= views[i].byteLength) left -= views[i++].byteLength;
    if (left > 0) views[i] = views[i].subarray(left);
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
    // One buffer per batch: its tensors (each on a TENSOR_ALIGN boundary), then the scratch slots
    // when some local reads scatter. Every byte of a tensor is written by exactly one copy (the plan
    // covers its box), so no zero-fill.
    const batch: TensorPlan[] = [];
    const bases: number[] = [];
    let size = 0;
    const fits = (n: number) => size + n <= batchBytes && size + n + SCRATCH_SLOTS * SCATTER_UNIT_BYTES <= MAX_BATCH_BUFFER;
    while (i < plan.tensors.length && (batch.length === 0 || fits(align(plan.tensors[i].byteLength)))) {
      bases.push(size);
      size += align(plan.tensors[i].byteLength);
      batch.push(plan.tensors[i++]);
    }
    const unitsByRank = new Map<number, ReadUnit[]>();
    let slotBytes = 0;
    batch.forEach((t, bi) => {
      for (const op of t.copies) {
        const index = sources.get(op.rank);
        const entry = index?.tensors.get(t.name);
        if (!index || !entry) throw new ShardserveError('Internal', `parameter '${t.name}': the plan reads rank ${op.rank}, which was not opened`, { param: t.name });
        const units = unitsByRank.get(op.rank) ?? [];
        unitsByRank.set(op.rank, units);
        readUnitsOf(op, entry, bases[bi], units);
      }
    });
    // Only files read with positional reads use the slots (remote and encrypted ones deliver buffers).
    const direct = (rank: number) => opts.directLocal !== false && sources.get(rank)!.encryption === 'none' && !isRemote(sources.get(rank)!.source.uri);
    for (const [rank, units] of unitsByRank) {
      if (!direct(rank)) continue;
      for (const u of units) if (u.at === undefined && !u.views) slotBytes = Math.max(slotBytes, align(u.length));
      // Small units are read in groups of up to SMALL_GROUP bytes, through the slots.
      if (units.filter(groupable).length > 1) slotBytes = Math.max(slotBytes, SMALL_GROUP);
    }
    const slots = slotBytes > 0 ? new ScratchSlots(size, SCRATCH_SLOTS, slotBytes) : undefined;
    const b = Buffer.allocUnsafeSlow(size + (slots ? SCRATCH_SLOTS * slotBytes : 0));
    const all = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
    await Promise.all([...unitsByRank.entries()].map(async ([rank, units]) => {
      const index = sources.get(rank)!;
      const source = index.source;
      units.sort((a, b) => a.fileOffset - b.fileOffset);
      if (direct(rank) && (await readLocalDirect(source.uri, source.size, units, all, slots, slotBytes, opts.concurrency ?? 4, stats))) return;
      // Units never overlap (distinct pieces are disjoint), so a range's offset identifies its unit.
      const byOffset = new Map(units.map((u) => [u.fileOffset, u]));
      const result = await readRanges(
        source,
        units.map((u) => ({ offset: u.fileOffset, length: u.length })),
        // Groups no longer than one part: every unit then arrives as a view of one response body
        // (readRanges copies a range only when it straddles parts), and is copied once, into its tensor.
        { concurrency: opts.concurrency ?? 4, coalesceGap: opts.coalesceGap ?? (isRemote(source.uri) ? 64 * 1024 : 0), maxCoalescedBytes: UNIT_BYTES, partSize: UNIT_BYTES, signal: opts.signal },
        (range, data) => byOffset.get(range.offset)!.scatter(data, all),
      );
      stats.readBytes += units.reduce((s, u) => s + u.length, 0);
      stats.bytesTransferred += result.bytesTransferred;
      stats.requests += result.requests;
    }));
    for (let bi = 0; bi < batch.length; bi++) {
      await consume(batch[bi], all.subarray(bases[bi], bases[bi] + batch[bi].byteLength));
      done += batch[bi].byteLength;
      opts.onProgress?.(done, plan.sliceBytes);
    }
  }
  return stats;
}
