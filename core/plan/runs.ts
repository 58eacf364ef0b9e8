import type { ByteRange, TensorEntry } from '../checkpoint/types.js';
import { ShardserveError } from '../errors.js';
import type { Box } from '../layout/box.js';

/**
 * A strided copy from one source tensor into one destination tensor: `counts` outer loops
 * (outermost first) around a contiguous run of `runBytes`. Offsets and strides are in bytes of the
 * respective tensors (C order), not of files.
 */
export interface CopyOp {
  /** Global rank of the source file. */
  rank: number;
  srcOffset: number;
  dstOffset: number;
  runBytes: number;
  counts: number[];
  srcStrides: number[];
  dstStrides: number[];
}

function stridesOf(shape: readonly number[], elemBytes: number): number[] {
  const strides = new Array<number>(shape.length);
  let s = elemBytes;
  for (let i = shape.length - 1; i >= 0; i--) {
    strides[i] = s;
    s *= shape[i];
  }
  return strides;
}

/**
 * The copy that moves `overlap` (in full-tensor coordinates) from a source tensor holding `src` to a
 * destination tensor holding `dst`. Trailing dims that are whole in all three merge into one run.
 */
export function copyForOverlap(rank: number, overlap: Box, src: Box, dst: Box, elemBytes: number): CopyOp {
  const n = overlap.sizes.length;
  const srcStrides = stridesOf(src.sizes, elemBytes);
  const dstStrides = stridesOf(dst.sizes, elemBytes);
  let srcOffset = 0;
  let dstOffset = 0;
  for (let i = 0; i < n; i++) {
    srcOffset += (overlap.offsets[i] - src.offsets[i]) * srcStrides[i];
    dstOffset += (overlap.offsets[i] - dst.offsets[i]) * dstStrides[i];
  }
  let runBytes = elemBytes;
  let k = n - 1;
  while (k >= 0) {
    runBytes *= overlap.sizes[k];
    const whole = overlap.sizes[k] === src.sizes[k] && overlap.sizes[k] === dst.sizes[k];
    k--;
    if (!whole) break;
  }
  const counts: number[] = [];
  const so: number[] = [];
  const dso: number[] = [];
  for (let i = 0; i <= k; i++) {
    if (overlap.sizes[i] === 1) continue;
    counts.push(overlap.sizes[i]);
    so.push(srcStrides[i]);
    dso.push(dstStrides[i]);
  }
  return { rank, srcOffset, dstOffset, runBytes, counts, srcStrides: so, dstStrides: dso };
}

/** Calls `visit(srcOffset, dstOffset, length)` for every contiguous run of a copy, in source order. */
export function forEachRun(op: CopyOp, visit: (srcOffset: number, dstOffset: number, length: number) => void): void {
  if (op.runBytes === 0 || op.counts.some((c) => c === 0)) return;
  const depth = op.counts.length;
  if (depth === 0) {
    visit(op.srcOffset, op.dstOffset, op.runBytes);
    return;
  }
  const idx = new Array<number>(depth).fill(0);
  let src = op.srcOffset;
  let dst = op.dstOffset;
  for (;;) {
    visit(src, dst, op.runBytes);
    let d = depth - 1;
    while (d >= 0) {
      idx[d]++;
      src += op.srcStrides[d];
      dst += op.dstStrides[d];
      if (idx[d] < op.counts[d]) break;
      src -= op.srcStrides[d] * op.counts[d];
      dst -= op.dstStrides[d] * op.counts[d];
      idx[d] = 0;
      d--;
    }
    if (d < 0) return;
  }
}

/** Bytes of the source tensor from a copy's first run to the end of its last. */
export function sourceSpan(op: CopyOp): number {
  if (op.runBytes === 0 || op.counts.some((c) => c === 0)) return 0;
  let last = op.srcOffset;
  for (let d = 0; d < op.counts.length; d++) last += (op.counts[d] - 1) * op.srcStrides[d];
  return last + op.runBytes - op.srcOffset;
}

/** Number of contiguous runs of a copy. */
export function runCount(op: CopyOp): number {
  return op.counts.reduce((a, b) => a * b, 1);
}

/**
 * Maps a run of tensor bytes onto the file ranges holding it (a .ckpt tensor over 512 MiB is stored
 * as several records).
 */
export function tensorRunToFile(entry: TensorEntry, offset: number, length: number, visit: (fileOffset: number, tensorOffset: number, length: number) => void): void {
  if (offset < 0 || offset + length > entry.byteLength) {
    throw new ShardserveError('OutOfRange', `parameter '${entry.name}': bytes ${offset}..${offset + length} are outside its ${entry.byteLength} bytes`, { param: entry.name });
  }
  let pieceStart = 0;
  for (const piece of entry.pieces) {
    const pieceEnd = pieceStart + piece.length;
    if (length > 0 && offset < pieceEnd && offset + length > pieceStart) {
      const lo = Math.max(offset, pieceStart);
      const hi = Math.min(offset + length, pieceEnd);
      visit(piece.offset + (lo - pieceStart), lo, hi - lo);
    }
    pieceStart = pieceEnd;
    if (pieceStart >= offset + length) break;
  }
}

/** Sorts and merges touching or overlapping ranges. */
export function coalesceRanges(ranges: ByteRange[]): ByteRange[] {
  const sorted = [...ranges].sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const r of sorted) {
    if (r.length === 0) continue;
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      out.push({ offset: r.offset, length: r.length });
    }
  }
  return out;
}
