import { ShardserveError } from '../errors.js';
import { TransientError, isTransient, withRetry, type RetryOptions } from './retry.js';
import type { ByteSource } from './source.js';

/** Deadline of one request (headers and body) unless SHARDSERVE_STORAGE_TIMEOUT_MS says otherwise. */
export function requestTimeoutMs(): number {
  const v = Number(process.env.SHARDSERVE_STORAGE_TIMEOUT_MS);
  return Number.isFinite(v) && v > 0 ? v : 60_000;
}

/** Retry policy of the remote backends; SHARDSERVE_STORAGE_RETRIES sets the attempt count. */
export function remoteRetry(): RetryOptions {
  const v = Number(process.env.SHARDSERVE_STORAGE_RETRIES);
  return { attempts: Number.isSafeInteger(v) && v > 0 ? v : 4, baseDelayMs: 100, maxDelayMs: 2000 };
}

/** The error code of a failed fetch (ECONNREFUSED, ENOTFOUND, UND_ERR_SOCKET, ...), if any. */
function netCode(e: unknown): string | undefined {
  for (let c: unknown = e, depth = 0; c && depth < 5; depth++) {
    const any = c as { code?: unknown; errors?: unknown[]; cause?: unknown; name?: unknown };
    if (typeof any.code === 'string') return any.code;
    if (Array.isArray(any.errors) && any.errors.length) {
      const inner = netCode(any.errors[0]);
      if (inner) return inner;
    }
    c = any.cause;
  }
  return undefined;
}

const TRANSIENT_NET = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN',
  'UND_ERR_SOCKET', 'UND_ERR_CLOSED', 'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT']);

/**
 * Turn a thrown fetch/body error into a ShardserveError naming `uri` and the endpoint: transient for
 * resets, refused connections and timeouts (retried), final for unknown hosts and the like.
 */
export function networkError(e: unknown, uri: string, endpoint: string, timeoutMs: number): ShardserveError {
  if (e instanceof ShardserveError) return e;
  const name = (e as { name?: string })?.name;
  if (name === 'TimeoutError') {
    return new TransientError('Timeout', `${uri}: no complete answer from ${endpoint} within ${timeoutMs} ms`, { file: uri, cause: e });
  }
  if (name === 'AbortError') return new ShardserveError('Aborted', `${uri}: request aborted`, { file: uri, cause: e });
  const code = netCode(e);
  if (code === 'ENOTFOUND') {
    return new ShardserveError('BadEndpoint', `${uri}: endpoint ${endpoint} does not resolve (ENOTFOUND); check the endpoint URL`, { file: uri, cause: e });
  }
  if (code === 'ECONNREFUSED') {
    return new TransientError('EndpointUnreachable', `${uri}: cannot connect to ${endpoint} (ECONNREFUSED); is the endpoint URL right and the server up?`, { file: uri, cause: e });
  }
  if (code && TRANSIENT_NET.has(code)) {
    return new TransientError('ConnectionFailed', `${uri}: connection to ${endpoint} failed (${code})`, { file: uri, cause: e });
  }
  let msg = (e as Error)?.message ?? String(e);
  for (let c = (e as { cause?: unknown })?.cause, d = 0; c instanceof Error && d < 5; c = (c as { cause?: unknown }).cause, d++) msg = c.message;
  // undici reports a body cut short by the peer as TypeError('terminated').
  if (msg === 'terminated' || /socket|other side closed|network/i.test(msg)) {
    return new TransientError('ConnectionFailed', `${uri}: connection to ${endpoint} broke (${code ?? msg})`, { file: uri, cause: e });
  }
  return new ShardserveError('RequestFailed', `${uri}: request to ${endpoint} failed (${code ?? msg})`, { file: uri, cause: e });
}

/**
 * Run a remote operation with the backend retry policy; when the retries are used up the last error
 * is rethrown as final (not transient) with the attempt count, so outer layers do not retry again.
 */
export async function retried<T>(uri: string, fn: () => Promise<T>, opts: RetryOptions = remoteRetry()): Promise<T> {
  let attempts = 0;
  try {
    return await withRetry(() => {
      attempts++;
      return fn();
    }, opts);
  } catch (e) {
    if (isTransient(e) && e instanceof ShardserveError) {
      const code = e.code === 'ShortBody' ? 'ShortRead' : e.code;
      const suffix = attempts > 1 ? ` (gave up after ${attempts} attempts)` : '';
      throw new ShardserveError(code, `${e.message}${suffix}`, { file: uri, cause: e });
    }
    throw e;
  }
}

/** Build a ByteSource over a ranged-read function, with bounds checks, retries and accounting. */
export function remoteSource(uri: string, size: number, readRange: (offset: number, length: number) => Promise<Uint8Array>, transferred?: () => number): ByteSource {
  let bytesRead = 0;
  return {
    uri,
    size,
    /** Bytes delivered by reads, or what the backend really transferred when it says (whole-read fallback). */
    get bytesRead() { return transferred ? transferred() : bytesRead; },
    async read(offset: number, length: number): Promise<Uint8Array> {
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
        throw new ShardserveError('OutOfRange', `${uri}: read of ${length} bytes at ${offset} is past the end (size ${size})`, { file: uri });
      }
      if (length === 0) return new Uint8Array(0);
      const bytes = await retried(uri, async () => {
        const b = await readRange(offset, length);
        if (b.length !== length) {
          throw new TransientError('ShortBody', `${uri}: asked for ${length} bytes at ${offset}, the server sent ${b.length}`, { file: uri });
        }
        return b;
      });
      bytesRead += length;
      return bytes;
    },
    async close() {},
  };
}

/** Read a fetch body fully, mapping a body cut short by the peer to a transient error. */
export async function bodyBytes(res: Response, uri: string, endpoint: string, timeoutMs: number): Promise<Uint8Array> {
  try {
    return new Uint8Array(await res.arrayBuffer());
  } catch (e) {
    throw networkError(e, uri, endpoint, timeoutMs);
  }
}

/** Parse `Content-Range: bytes a-b/total`. */
export function parseContentRange(v: string | null): { start: number; end: number; total?: number } | undefined {
  const m = v ? /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(v.trim()) : null;
  if (!m) return undefined;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? undefined : Number(m[3]) };
}
