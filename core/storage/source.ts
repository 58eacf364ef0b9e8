import { readSync } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { ShardserveError } from '../errors.js';

/**
 * A readable object with random access: a local file, an S3 object, an HTTP resource, or a
 * decrypted view of one. Readers of checkpoint formats take a ByteSource, never a path, so every
 * format works over every storage backend.
 */
export interface ByteSource {
  /** Where the bytes come from, as the user wrote it (path or URI); used in error messages. */
  readonly uri: string;
  /** Total size in bytes. */
  readonly size: number;
  /** Exactly `length` bytes starting at `offset`; a short read is an error, never a short buffer. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * The same, synchronously, where that is cheap (a local file, memory). Readers use it for chains
   * of small reads whose positions depend on each other (record headers): a positional read from
   * the page cache takes microseconds, a round trip through the thread pool a hundred or more.
   */
  readSync?(offset: number, length: number): Uint8Array;
  /** Bytes transferred from the backend so far (for readBytes / sliceBytes reporting). */
  readonly bytesRead: number;
  close(): Promise<void>;
}

/** A local file as a ByteSource. */
export async function openLocalSource(path: string): Promise<ByteSource> {
  let size: number;
  try {
    size = (await stat(path)).size;
  } catch (e) {
    throw new ShardserveError('NotFound', `${path}: no such file`, { file: path, cause: e });
  }
  const handle = await open(path, 'r');
  let bytesRead = 0;
  const check = (offset: number, length: number) => {
    if (offset < 0 || length < 0 || offset + length > size) {
      throw new ShardserveError('OutOfRange', `${path}: read of ${length} bytes at ${offset} is past the end (size ${size})`, { file: path });
    }
  };
  const short = (at: number, end: number) => new ShardserveError('ShortRead', `${path}: file ended after ${at} bytes, expected ${end}`, { file: path });
  return {
    uri: path,
    size,
    get bytesRead() { return bytesRead; },
    async read(offset: number, length: number): Promise<Uint8Array> {
      check(offset, length);
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead: n } = await handle.read(buf, done, length - done, offset + done);
        if (n === 0) throw short(offset + done, offset + length);
        done += n;
      }
      bytesRead += length;
      return buf;
    },
    readSync(offset: number, length: number): Uint8Array {
      check(offset, length);
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const n = readSync(handle.fd, buf, done, length - done, offset + done);
        if (n === 0) throw short(offset + done, offset + length);
        done += n;
      }
      bytesRead += length;
      return buf;
    },
    close: () => handle.close(),
  };
}
