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

  it('joins bytes `lead` bytes into an allocation of their own, and views a chunk that holds them whatever the lead', () => {
    const bytes = Buffer.from(Array.from({ length: 9000 }, (_, i) => i % 256));
    for (const lead of [0, 3, 5]) {
      const q = new ChunkQueue();
      q.push(bytes.subarray(0, 4000));
      q.push(bytes.subarray(4000));
      const joined = q.take(6000, lead);
      expect(joined.equals(bytes.subarray(0, 6000))).toBe(true);
      expect([joined.byteOffset, joined.buffer.byteLength]).toEqual([lead, lead + 6000]);
      const viewed = q.take(3000, lead);
      expect(viewed.buffer).toBe(bytes.buffer);
      expect(viewed.equals(bytes.subarray(6000))).toBe(true);
    }
  });
});
