import { describe, expect, it } from 'vitest';
import { ChunkQueue } from './chunks.js';

describe('ChunkQueue', () => {
  it('gives back the bytes in order however they were split, viewing a chunk when it holds them', () => {
    const bytes = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
    for (const size of [1, 3, 9, 50, 100]) {
      const q = new ChunkQueue();
      for (let at = 0; at < bytes.length; at += size) q.push(bytes.subarray(at, at + size));
      expect(q.length).toBe(100);
      expect(q.peek(9).subarray(0, 9)).toEqual(bytes.subarray(0, 9));
      expect(q.take(0)).toHaveLength(0);
      const parts = [q.take(9), q.take(41), q.take(50)];
      expect(Buffer.concat(parts)).toEqual(bytes);
      expect(q.length).toBe(0);
    }
    // Within one chunk: a view of it, no copy.
    const q = new ChunkQueue();
    q.push(bytes);
    expect(q.take(10).buffer).toBe(bytes.buffer);
  });
});
