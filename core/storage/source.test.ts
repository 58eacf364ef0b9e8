import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { openLocalSource } from './source.js';

const dir = mkdtempSync(join(tmpdir(), 'shardserve-source-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('openLocalSource', () => {
  it('reads the same exact bytes asynchronously and synchronously, and counts both', async () => {
    const path = join(dir, 'a.bin');
    const data = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 7 + 3) & 0xff);
    writeFileSync(path, data);
    const src = await openLocalSource(path);
    try {
      expect(Buffer.from(await src.read(100, 5000))).toEqual(Buffer.from(data.subarray(100, 5100)));
      expect(Buffer.from(src.readSync!(9000, 1000))).toEqual(Buffer.from(data.subarray(9000)));
      expect(src.readSync!(0, 0).length).toBe(0);
      expect(src.bytesRead).toBe(6000);
      expect(() => src.readSync!(9001, 1000)).toThrow(expect.objectContaining({ code: 'OutOfRange', message: `${path}: read of 1000 bytes at 9001 is past the end (size 10000)` }));
    } finally {
      await src.close();
    }
  });

  it('a file cut short after opening gives ShortRead naming the file, from both kinds of read', async () => {
    const path = join(dir, 'b.bin');
    writeFileSync(path, new Uint8Array(4096));
    const src = await openLocalSource(path);
    try {
      truncateSync(path, 1000);
      expect(() => src.readSync!(500, 1000)).toThrow(expect.objectContaining({ code: 'ShortRead', message: `${path}: file ended after 1000 bytes, expected 1500` }));
      await expect(src.read(500, 1000)).rejects.toMatchObject({ code: 'ShortRead', message: `${path}: file ended after 1000 bytes, expected 1500` });
    } finally {
      await src.close();
    }
  });
});
