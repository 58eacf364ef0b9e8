/**
 * Received bytes as the chunks they came in: `take(n)` gives the next n bytes as a view of the
 * first chunk when it holds them all, else copied once into a buffer of their own.
 */
export class ChunkQueue {
  private chunks: Buffer[] = [];
  /** Bytes queued. */
  length = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  /**
   * The next `n` bytes (at most `length`), removed from the queue. When they must be joined, they
   * go `lead` bytes into a buffer of their own (of `lead + n` bytes), so that byte k of them sits
   * at k + lead from the start of an allocation: the caller picks the alignment of what is inside.
   */
  take(n: number, lead = 0): Buffer {
    if (n === 0) return EMPTY;
    this.length -= n;
    const first = this.chunks[0];
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    // Buffer.allocUnsafeSlow: an allocation of its own (allocUnsafe may hand out a piece of a shared pool).
    const out = lead ? Buffer.allocUnsafeSlow(lead + n).subarray(lead) : Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }

  /** The next `n` bytes (at most `length`) without removing them: a view when the first chunk holds them. */
  peek(n: number): Buffer {
    const first = this.chunks[0];
    if (first.length >= n) return first;
    const out = Buffer.allocUnsafe(n);
    let at = 0;
    for (const c of this.chunks) {
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (at === n) break;
    }
    return out;
  }
}

const EMPTY = Buffer.alloc(0);
