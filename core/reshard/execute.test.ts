import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createTensorFileWriter } from '../checkpoint/writer.js';
import type { CheckpointIndex } from '../checkpoint/types.js';
import { indexCkpt } from '../ckpt/reader.js';
import { extractBox, layoutOf, strategyOf } from '../layout/test-builders.js';
import { planRank, type SourceFile } from '../plan/planner.js';
import { copyForOverlap, forEachRun, runCount, sourceSpan } from '../plan/runs.js';
import { openLocalSource } from '../storage/source.js';
import { denseViews, executePlan, scatterDense, tilesDensely } from './execute.js';

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
      // The same stretches read into denseViews in order (what one vectored read does).
      const viaViews = new Uint8Array(base + dstLen + 3).fill(0xee).fill(0, base, base + dstLen);
      for (let a = op.srcOffset; a < op.srcOffset + span; a += part) {
        const z = Math.min(a + part, op.srcOffset + span);
        let at = a;
        for (const v of denseViews(op, a, z - a, viaViews, base)) {
          v.set(srcBytes.subarray(at, at + v.byteLength));
          at += v.byteLength;
        }
        expect(at).toBe(z);
      }
      expect(viaViews.subarray(base, base + dstLen)).toEqual(want);
      expect(viaViews.subarray(0, base).every((x) => x === 0xee) && viaViews.subarray(base + dstLen).every((x) => x === 0xee)).toBe(true);
      expect(got).toEqual(want);
      expect(within.subarray(base, base + dstLen)).toEqual(want);
      expect(within.subarray(0, base).every((x) => x === 0xee) && within.subarray(base + dstLen, scratch).every((x) => x === 0xee)).toBe(true);
      checked++;
    }
    expect(checked).toBeGreaterThan(50);
  });
});

describe('executePlan on local files', () => {
  const dirs: string[] = [];
  afterEach(() => {
    vi.restoreAllMocks();
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });

  /**
   * Column-split weights (TP 2 on dim 1) merged to one device: every destination row interleaves
   * runs from both files. Runs of 400 B take the vectored-read path; 6000 rows make a source stretch
   * of 2.4 MB, so a 2 MiB read unit ends inside a run and a unit has more than IOV_MAX runs. `chunk`
   * splits the .ckpt records (as MindSpore does every 512 MiB) so runs also straddle records.
   */
  async function mergeColumns(chunk: number | undefined, runBytes: number, opts: { directLocal?: boolean } = {}) {
    const dir = mkdtempSync(join(tmpdir(), 'execute-'));
    dirs.push(dir);
    const rows = 6000;
    const cols = (2 * runBytes) / 4;
    const full = Uint8Array.from({ length: rows * cols * 4 }, (_, i) => (i * 131 + (i >>> 9)) & 0xff);
    const strategy = strategyOf([{ w: layoutOf([2], [-1, 0]), b: layoutOf([2], [0]) }]);
    const bias = Uint8Array.from({ length: cols * 4 }, (_, i) => (i * 7) & 0xff);
    const files = new Map<number, SourceFile>();
    const indexes = new Map<number, CheckpointIndex>();
    for (const rank of [0, 1]) {
      const path = join(dir, `rank_${rank}`, 'net.ckpt');
      mkdirSync(join(dir, `rank_${rank}`));
      const w = await createTensorFileWriter(path, 'mindspore-ckpt', [{ name: 'b', dtype: 'F32', shape: [cols / 2] }, { name: 'w', dtype: 'F32', shape: [rows, cols / 2] }], { ckptChunkBytes: chunk });
      await w.writeAt('b', 0, bias.subarray(rank * cols * 2, (rank + 1) * cols * 2));
      await w.writeAt('w', 0, extractBox(full, [rows, cols], { offsets: [0, rank * (cols / 2)], sizes: [rows, cols / 2] }, 4));
      await w.commit();
      const index = await indexCkpt(await openLocalSource(path));
      indexes.set(rank, index);
      files.set(rank, { rank, uri: path, tensors: index.tensors });
    }
    const plan = planRank({ source: strategy, files, destination: { kind: 'single' }, rank: 0 });
    const out = new Map<string, Uint8Array>();
    const stats = await executePlan(plan, indexes, (t, data) => void out.set(t.name, Uint8Array.from(data)), { directLocal: opts.directLocal });
    for (const index of indexes.values()) await index.source.close();
    return { full, bias, out, stats };
  }

  async function readvSpy() {
    const probe = await open(fileURLToPath(import.meta.url), 'r');
    const proto = Object.getPrototypeOf(probe);
    await probe.close();
    return vi.spyOn(proto, 'readv');
  }

  it.each([undefined, 1_000_003])('puts interleaved runs of 400 B in place with vectored reads (records split every %s bytes)', async (chunk) => {
    const readv = await readvSpy();
    const { full, bias, out, stats } = await mergeColumns(chunk, 400);
    expect(Buffer.from(out.get('w')!).equals(Buffer.from(full))).toBe(true);
    expect(Buffer.from(out.get('b')!).equals(Buffer.from(bias))).toBe(true);
    expect(stats.readBytes).toBe(full.length + bias.length);
    // 6000 runs per file, at most 1024 buffers per call: at least 6 vectored reads per file.
    expect(readv.mock.calls.length).toBeGreaterThanOrEqual(12);
    expect(readv.mock.calls.every(([views]) => (views as Uint8Array[]).length <= 1024)).toBe(true);
  });

  it('reads many small tensors close together in groups (the record headers between them read and dropped), with the same bytes as one read per tensor', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'execute-'));
    dirs.push(dir);
    // 300 tensors a file: [8,16] F32 split on dim 1 (TP 2) and [24] F32 split on dim 0; merged to one device.
    const names = Array.from({ length: 150 }, (_, i) => [`layer${i}.w`, `layer${i}.b`]).flat();
    const strategy = strategyOf([Object.fromEntries(names.map((n) => [n, n.endsWith('.w') ? layoutOf([2], [-1, 0]) : layoutOf([2], [0])]))]);
    const fulls = new Map(names.map((n, k) => [n, Uint8Array.from({ length: n.endsWith('.w') ? 8 * 16 * 4 : 24 * 4 }, (_, i) => (i * 31 + k * 7) & 0xff)]));
    const files = new Map<number, SourceFile>();
    const indexes = new Map<number, CheckpointIndex>();
    for (const rank of [0, 1]) {
      const path = join(dir, `rank_${rank}`, 'net.ckpt');
      mkdirSync(join(dir, `rank_${rank}`));
      const w = await createTensorFileWriter(path, 'mindspore-ckpt', names.map((n) => ({ name: n, dtype: 'F32' as const, shape: n.endsWith('.w') ? [8, 8] : [12] })));
      for (const n of names) {
        const full = fulls.get(n)!;
        await w.writeAt(n, 0, n.endsWith('.w') ? extractBox(full, [8, 16], { offsets: [0, rank * 8], sizes: [8, 8] }, 4) : full.subarray(rank * 48, rank * 48 + 48));
      }
      await w.commit();
      const index = await indexCkpt(await openLocalSource(path));
      indexes.set(rank, index);
      files.set(rank, { rank, uri: path, tensors: index.tensors });
    }
    const plan = planRank({ source: strategy, files, destination: { kind: 'single' }, rank: 0 });
    const probe = await open(fileURLToPath(import.meta.url), 'r');
    const proto = Object.getPrototypeOf(probe);
    await probe.close();
    const run = async (directLocal: boolean) => {
      const read = vi.spyOn(proto, 'read');
      const out = new Map<string, Buffer>();
      const stats = await executePlan(plan, indexes, (t, data) => void out.set(t.name, Buffer.from(data)), { directLocal });
      const reads = read.mock.calls.length;
      read.mockRestore();
      return { out, stats, reads };
    };
    const grouped = await run(true);
    const oneByOne = await run(false);
    for (const index of indexes.values()) await index.source.close();
    for (const n of names) {
      expect(grouped.out.get(n)!.equals(Buffer.from(fulls.get(n)!))).toBe(true);
      expect(oneByOne.out.get(n)!.equals(grouped.out.get(n)!)).toBe(true);
    }
    // 300 tensors in each of 2 files; every file is read in one group (its tensors sit within 4 KiB of each other).
    expect(grouped.stats.requests).toBe(2);
    expect(grouped.reads).toBeLessThanOrEqual(4);
    expect(oneByOne.stats.requests).toBe(600);
    expect(grouped.stats.readBytes).toBe(plan.readBytes);
    // The headers between the tensors are read too, and counted.
    expect(grouped.stats.bytesTransferred).toBeGreaterThan(plan.readBytes);
    expect(grouped.stats.bytesTransferred).toBeLessThan(plan.readBytes * 1.5);
  });

  it('moves runs shorter than 128 B through scratch slots instead, and gives the same bytes as without the local fast path', async () => {
    const readv = await readvSpy();
    const small = await mergeColumns(undefined, 64);
    expect(readv).not.toHaveBeenCalled();
    expect(Buffer.from(small.out.get('w')!).equals(Buffer.from(small.full))).toBe(true);
    const viaRanges = await mergeColumns(1_000_003, 400, { directLocal: false });
    expect(readv).not.toHaveBeenCalled();
    expect(Buffer.from(viaRanges.out.get('w')!).equals(Buffer.from(viaRanges.full))).toBe(true);
  });
});
