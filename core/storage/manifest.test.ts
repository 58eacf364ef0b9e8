import { describe, expect, it } from 'vitest';
import { isFresh, type ManifestFile } from './manifest.js';

describe('isFresh', () => {
  // A manifest written from a local directory: size-mtime ETag and the file's mtime with sub-ms digits.
  const local = (mtimeMs: number): ManifestFile => ({ key: 'rank_0/net.ckpt', size: 8940, etag: `8940-${mtimeMs}`, mtimeMs });
  // The same file through a web server: its own ETag and Last-Modified (whole seconds).
  const served = (lastModified: string, size = 8940) => ({ key: 'rank_0/net.ckpt', size, etag: 'de529898027b4892865d3858ff272c80', mtimeMs: Date.parse(lastModified) });

  it('matches a local mtime to the Last-Modified second of a server that truncates or one that rounds to the millisecond first', () => {
    const mtimeMs = 1796195418999.7979;
    // Truncated to the second (nginx, Apache): ...18 s.
    expect(isFresh(local(mtimeMs), served(new Date(Math.floor(mtimeMs / 1000) * 1000).toUTCString()))).toBe(true);
    // Node's stat().mtime rounds to 18 s + 1000 ms, so a Node server says ...19 s.
    expect(new Date(Math.round(mtimeMs)).toUTCString()).toBe('Wed, 02 Dec 2026 07:10:19 GMT');
    expect(isFresh(local(mtimeMs), served('Wed, 02 Dec 2026 07:10:19 GMT'))).toBe(true);
  });

  it('calls a file stale when the second, the size or the detector differs', () => {
    expect(isFresh(local(1796195418999.7979), served('Wed, 02 Dec 2026 07:10:20 GMT'))).toBe(false);
    expect(isFresh(local(1796195418400), served('Wed, 02 Dec 2026 07:10:19 GMT'))).toBe(false);
    expect(isFresh(local(1796195418400), served('Wed, 02 Dec 2026 07:10:18 GMT', 8941))).toBe(false);
    expect(isFresh(local(1796195418400), { ...served('Wed, 02 Dec 2026 07:10:18 GMT'), mtimeMs: undefined })).toBe(false);
    expect(isFresh(local(1796195418400), { ...served('Wed, 02 Dec 2026 07:10:18 GMT'), etag: '8940-1796195418000' })).toBe(false);
    expect(isFresh(local(1796195418400), served('Wed, 02 Dec 2026 07:10:18 GMT'))).toBe(true);
  });
});
