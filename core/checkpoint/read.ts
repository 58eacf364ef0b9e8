import { ShardserveError } from '../errors.js';
import type { ByteRange, CheckpointIndex, TensorEntry } from './types.js';

/**
 * The file ranges holding bytes [byteOffset, byteOffset+byteLength) of a tensor's C-order data,
 * in order, across its pieces (a .ckpt tensor over 512 MiB is stored as several records).
 */
export function tensorFileRanges(entry: TensorEntry, byteOffset: number, byteLength: number): ByteRange[] {
  if (!(Number.isSafeInteger(byteOffset) && Number.isSafeInteger(byteLength) && byteOffset >= 0 && byteLength >= 0 && byteOffset + byteLength <= entry.byteLength)) {
    throw new ShardserveError('OutOfRange', `parameter '${entry.name}': bytes [${byteOffset}, ${byteOffset + byteLength}) are outside its ${entry.byteLength} bytes`, { param: entry.name });
  }
  const ranges: ByteRange[] = [];
  let pieceStart = 0;
  let want = byteOffset;
  let left = byteLength;
  for (const piece of entry.pieces) {
    if (left === 0) break;
    const pieceEnd = pieceStart + piece.length;
    if (want < pieceEnd) {
      const inPiece = want - pieceStart;
      const n = Math.min(left, piece.length - inPiece);
      const last = ranges[ranges.length - 1];
      // Adjacent pieces that happen to be contiguous in the file become one range.
      if (last && last.offset + last.length === piece.offset + inPiece) last.length += n;
      else ranges.push({ offset: piece.offset + inPiece, length: n });
      want += n;
      left -= n;
    }
    pieceStart = pieceEnd;
  }
  return ranges;
}

/** Bytes [byteOffset, byteOffset+byteLength) of a tensor's C-order data. */
export async function readTensorBytes(index: CheckpointIndex, entry: TensorEntry, byteOffset: number, byteLength: number): Promise<Uint8Array> {
  const ranges = tensorFileRanges(entry, byteOffset, byteLength);
  if (ranges.length === 1) return index.source.read(ranges[0].offset, ranges[0].length);
  const out = new Uint8Array(byteLength);
  let at = 0;
  for (const r of ranges) {
    out.set(await index.source.read(r.offset, r.length), at);
    at += r.length;
  }
  return out;
}
