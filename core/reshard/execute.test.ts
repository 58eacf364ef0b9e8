import { describe, expect, it } from 'vitest';
import { copyForOverlap, forEachRun, runCount, sourceSpan } from '../plan/runs.js';
import { scatterDense, tilesDensely } from './execute.js';

describe('scatterDense', () => {
  it('places every byte where forEachRun does, for any split of the source stretch into parts, from a buffer or from inside the destination buffer', () => {
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    let checked = 0;
    for (let trial = 0; trial < 300; trial++) {
      const dims = 1 + rnd(3);
      const full = Array.from({ length: dims }, () => 1 + rnd(6));
      // Source holds whole rows of dim 0 (so the copy tiles densely); destination is any box.
      const s0 = rnd(full[0]);
      const src = { offsets: full.map((_, i) => (i === 0 ? s0 : 0)), sizes: full.map((n, i) => (i === 0 ? 1 + rnd(n - s0) : n)) };
      const dOff = full.map((n) => rnd(n));
      const dst = { offsets: dOff, sizes: full.map((n, i) => 1 + rnd(n - dOff[i])) };
      const lo = src.offsets.map((o, i) => Math.max(o, dst.offsets[i]));
      const hi = src.offsets.map((o, i) => Math.min(o + src.sizes[i], dst.offsets[i] + dst.sizes[i]));
      if (hi.some((h, i) => h <= lo[i])) continue;
      const overlap = { offsets: lo, sizes: hi.map((h, i) => h - lo[i]) };
      const elem = 1 + rnd(3);
      const op = copyForOverlap(0, overlap, src, dst, elem);
      const span = sourceSpan(op);
      if (span !== runCount(op) * op.runBytes || !tilesDensely(op)) continue;
      const srcBytes = new Uint8Array(src.sizes.reduce((a, b) => a * b, elem)).map((_, i) => (i * 31 + 7) & 0xff);
      const dstLen = dst.sizes.reduce((a, b) => a * b, elem);
      const want = new Uint8Array(dstLen);
      forEachRun(op, (s, d, len) => want.set(srcBytes.subarray(s, s + len), d));
      const got = new Uint8Array(dstLen);
      // The same copy with the source parts moved inside one buffer: the destination at `base`, each
      // part staged in a scratch area after it (as the executor's batch buffer and scratch slots).
      const base = 1 + rnd(9);
      const scratch = base + dstLen + rnd(5);
      const within = new Uint8Array(scratch + span).fill(0xee).fill(0, base, base + dstLen);
      const part = 1 + rnd(span);
      for (let a = op.srcOffset; a < op.srcOffset + span; a += part) {
        const z = Math.min(a + part, op.srcOffset + span);
        scatterDense(op, a, z - a, srcBytes.subarray(a, z), got, 0);
        within.set(srcBytes.subarray(a, z), scratch);
        scatterDense(op, a, z - a, scratch, within, base);
      }
      expect(got).toEqual(want);
      expect(within.subarray(base, base + dstLen)).toEqual(want);
      expect(within.subarray(0, base).every((x) => x === 0xee) && within.subarray(base + dstLen, scratch).every((x) => x === 0xee)).toBe(true);
      checked++;
    }
    expect(checked).toBeGreaterThan(50);
  });
});
