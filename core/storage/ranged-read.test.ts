import { describe, expect, it } from 'vitest';
import { ShardserveError } from '../errors.js';
import { planGroups, readRanges } from './ranged-read.js';
import { TransientError } from './retry.js';
import type { ByteSource } from './source.js';

function bytesSource(data: Uint8Array, hooks: { fail?: (n: number) => Error | undefined; delayMs?: number } = {}) {
  const log: { offset: number; length: number }[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  let bytesRead = 0;
  const src: ByteSource & { log: typeof log; maxInFlight: () => number } = {
    uri: 'mem://test',
    size: data.length,
    get bytesRead() { return bytesRead; },
    log,
    maxInFlight: () => maxInFlight,
    async read(offset, length) {
      log.push({ offset, length });
      const err = hooks.fail?.(log.length);
      if (err) throw err;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((r) => setTimeout(r, hooks.delayMs ?? 1));
      inFlight--;
      bytesRead += length;
      return data.slice(offset, offset + length);
    },
    async close() {},
  };
  return src;
}

const data = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 7 + 3) & 0xff);

describe('readRanges', () => {
  it('gives the sink exactly the asked ranges and coalesces near ones', async () => {
    const src = bytesSource(data);
    const ranges = [{ offset: 100, length: 50 }, { offset: 0, length: 10 }, { offset: 160, length: 40 }, { offset: 5000, length: 100 }];
    const got = new Map<number, Uint8Array>();
    const res = await readRanges(src, ranges, { coalesceGap: 100 }, (r, b) => void got.set(r.offset, b.slice()));
    for (const r of ranges) expect(got.get(r.offset)).toEqual(data.slice(r.offset, r.offset + r.length));
    // [0,10) + [100,150) + [160,200) → one request of 200 bytes; [5000,5100) its own.
    expect(src.log).toEqual([{ offset: 0, length: 200 }, { offset: 5000, length: 100 }]);
    expect(res).toEqual({ bytesTransferred: 300, requests: 2, bytesRequested: 200, extraBytes: 100 });
  });

  it('does not coalesce when the gap is larger, or when coalescing is off', async () => {
    const src = bytesSource(data);
    const res = await readRanges(src, [{ offset: 0, length: 10 }, { offset: 20, length: 10 }], { coalesceGap: 5 }, () => {});
    expect(res.requests).toBe(2);
    expect(res.extraBytes).toBe(0);
    const src2 = bytesSource(data);
    const res2 = await readRanges(src2, [{ offset: 0, length: 10 }, { offset: 10, length: 10 }], { coalesceGap: -1 }, () => {});
    expect(res2.requests).toBe(2);
  });

  it('reads overlapping ranges once and caps group size', async () => {
    const src = bytesSource(data);
    const got: [number, number, Uint8Array][] = [];
    const res = await readRanges(src, [{ offset: 0, length: 100 }, { offset: 50, length: 100 }], { coalesceGap: 0 }, (r, b) => void got.push([r.offset, r.length, b.slice()]));
    expect(src.log).toEqual([{ offset: 0, length: 150 }]);
    expect(res.bytesRequested).toBe(150);
    for (const [o, l, b] of got) expect(b).toEqual(data.slice(o, o + l));
    const groups = planGroups([{ offset: 0, length: 10 }, { offset: 11, length: 10 }, { offset: 22, length: 10 }], 5, 21);
    expect(groups.map((g) => [g.offset, g.end])).toEqual([[0, 21], [22, 32]]);
  });

  it('splits a long range into parallel parts and bounds the window', async () => {
    const src = bytesSource(data, { delayMs: 5 });
    let out: Uint8Array | undefined;
    const res = await readRanges(src, [{ offset: 1000, length: 8000 }], { partSize: 1000, concurrency: 3 }, (_r, b) => void (out = b.slice()));
    expect(out).toEqual(data.slice(1000, 9000));
    expect(res.requests).toBe(8);
    expect(src.maxInFlight()).toBe(3);
  });

  it('delivers every range exactly once when ranges straddle parts that arrive out of order', async () => {
    let seed = 12345;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
    for (let trial = 0; trial < 20; trial++) {
      const src = bytesSource(data, { delayMs: rnd(3) });
      const ranges = Array.from({ length: 1 + rnd(40) }, () => {
        const offset = rnd(data.length - 1);
        return { offset, length: rnd(Math.min(700, data.length - offset)) };
      });
      const seen = new Map<number, number>();
      await readRanges(src, ranges, { coalesceGap: rnd(300) - 50, partSize: 1 + rnd(500), concurrency: 1 + rnd(5) }, async (r, b) => {
        const i = ranges.indexOf(r);
        seen.set(i, (seen.get(i) ?? 0) + 1);
        expect(b).toEqual(data.slice(r.offset, r.offset + r.length));
        if (rnd(2)) await new Promise((res) => setTimeout(res, 1));
      });
      expect(seen.size).toBe(ranges.length);
      expect([...seen.values()].every((n) => n === 1)).toBe(true);
    }
  });

  it('retries transient failures and fails at once on others', async () => {
    const src = bytesSource(data, { fail: (n) => (n <= 2 ? new TransientError('Throttled', 'mem://test: slow down') : undefined) });
    let out: Uint8Array | undefined;
    const res = await readRanges(src, [{ offset: 0, length: 10 }], { retry: { baseDelayMs: 1 } }, (_r, b) => void (out = b.slice()));
    expect(out).toEqual(data.slice(0, 10));
    expect(res.requests).toBe(1);
    expect(src.log.length).toBe(3);

    const bad = bytesSource(data, { fail: () => new ShardserveError('AccessDenied', 'mem://test: denied') });
    await expect(readRanges(bad, [{ offset: 0, length: 10 }], {}, () => {})).rejects.toMatchObject({ code: 'AccessDenied' });
    expect(bad.log.length).toBe(1);

    const always = bytesSource(data, { fail: () => new TransientError('Throttled', 'mem://test: slow down') });
    await expect(readRanges(always, [{ offset: 0, length: 10 }], { retry: { attempts: 3, baseDelayMs: 1 } }, () => {})).rejects.toMatchObject({ code: 'Throttled' });
    expect(always.log.length).toBe(3);
  });

  it('rejects ranges outside the object and detects short reads', async () => {
    await expect(readRanges(bytesSource(data), [{ offset: 9990, length: 20 }], {}, () => {})).rejects.toThrow(/mem:\/\/test: range of 20 bytes at 9990 is outside the object \(size 10000\)/);
    const short: ByteSource = { ...bytesSource(data), read: async () => new Uint8Array(3) };
    await expect(readRanges(short, [{ offset: 0, length: 10 }], {}, () => {})).rejects.toMatchObject({ code: 'ShortRead' });
  });
});
