import { ShardserveError } from '../errors.js';
import { MANIFEST_NAME, parseManifest } from './manifest.js';
import { bodyBytes, networkError, parseContentRange, remoteSource, requestTimeoutMs, retried } from './remote.js';
import { TransientError } from './retry.js';
import type { ByteSource } from './source.js';
import type { ObjectInfo, Storage } from './storage.js';

/**
 * A server that ignores `Range` and answers 200 with the whole object is tolerated only for objects
 * up to this size (read once, then served from memory); a larger one is an error, because a rank
 * would otherwise download whole multi-GiB files per small read. SHARDSERVE_HTTP_WHOLE_READ_LIMIT.
 */
export function wholeReadLimit(): number {
  const v = Number(process.env.SHARDSERVE_HTTP_WHOLE_READ_LIMIT);
  return Number.isSafeInteger(v) && v >= 0 ? v : 8 * 1024 * 1024;
}

/**
 * `http(s)://host/path` as a read-only Storage. Objects are fetched with Range requests (206 and
 * Content-Range verified); HTTP cannot list, so list() reads the `shardserve index` manifest.
 */
export async function openHttpStorage(uri: string): Promise<Storage> {
  let root: URL;
  try {
    root = new URL(uri);
  } catch (e) {
    throw new ShardserveError('BadUri', `${uri}: not a valid URL`, { file: uri, cause: e });
  }
  if (root.search || root.hash) throw new ShardserveError('BadUri', `${uri}: query strings and fragments are not supported in a checkpoint URL`, { file: uri });
  const base = uri.replace(/\/+$/, '');
  const endpoint = root.origin;
  const timeoutMs = requestTimeoutMs();
  const uriOf = (key: string) => (key ? `${base}/${key}` : base);
  const urlOf = (key: string) => (key ? `${base}/${key.split('/').map(encodeURIComponent).join('/')}` : base);
  const checkKey = (key: string) => {
    if (key.split('/').some((s) => s === '..')) throw new ShardserveError('BadKey', `${uri}: key '${key}' escapes the root`, { file: uri });
  };

  const request = async (method: string, key: string, headers: Record<string, string> = {}, ok = [200]): Promise<Response> => {
    const u = uriOf(key);
    let res: Response;
    try {
      res = await fetch(urlOf(key), { method, headers, signal: AbortSignal.timeout(timeoutMs), redirect: 'follow' });
    } catch (e) {
      throw networkError(e, u, endpoint, timeoutMs);
    }
    if (ok.includes(res.status)) return res;
    await res.body?.cancel();
    const opt = { file: u };
    if (res.status === 404 || res.status === 410) throw new ShardserveError('NotFound', `${u}: no such object (HTTP ${res.status})`, opt);
    if (res.status === 401 || res.status === 403) throw new ShardserveError('AccessDenied', `${u}: access denied (HTTP ${res.status})`, opt);
    if (res.status === 412) throw new ShardserveError('ObjectChanged', `${u}: the object changed while it was being read (ETag no longer matches)`, opt);
    if (res.status === 416) throw new ShardserveError('OutOfRange', `${u}: requested range is outside the object (HTTP 416)`, opt);
    if (res.status === 429 || res.status >= 500) throw new TransientError(res.status === 429 ? 'Throttled' : 'ServerError', `${u}: the server answered HTTP ${res.status}`, opt);
    throw new ShardserveError('RequestFailed', `${u}: ${method} failed with HTTP ${res.status}`, opt);
  };

  /** Strong ETags seen by stat, for If-Match on later ranged reads of the same object. */
  const strongOf = new Map<string, { etag?: string; strong: string }>();
  const stat = async (key: string): Promise<ObjectInfo & { strongEtag?: string }> => {
    checkKey(key);
    return retried(uriOf(key), async () => {
      const res = await request('HEAD', key);
      const size = Number(res.headers.get('content-length'));
      if (!Number.isSafeInteger(size) || size < 0) {
        throw new ShardserveError('BadResponse', `${uriOf(key)}: the server sent no Content-Length for HEAD`, { file: uriOf(key) });
      }
      const raw = res.headers.get('etag');
      const lm = res.headers.get('last-modified');
      const strong = raw && !raw.startsWith('W/') ? raw : undefined;
      const etag = raw ? raw.replace(/^W\//, '').replace(/^"(.*)"$/, '$1') : lm ? `lm:${lm}` : undefined;
      const mtimeMs = lm ? Date.parse(lm) : undefined;
      if (strong) strongOf.set(key, { etag, strong });
      else strongOf.delete(key);
      return { key, size, etag, strongEtag: strong, mtimeMs: Number.isFinite(mtimeMs) ? mtimeMs : undefined };
    });
  };

  const storage: Storage = {
    uri,
    uriOf,
    async list() {
      let bytes: Uint8Array;
      try {
        bytes = await storage.readAll(MANIFEST_NAME);
      } catch (e) {
        if ((e as ShardserveError).code === 'NotFound') {
          throw new ShardserveError('NoListing', `${uri}: HTTP cannot list a directory and there is no ${MANIFEST_NAME} here; run \`shardserve index <dir>\` on the checkpoint before serving it over HTTP`, { file: uriOf(MANIFEST_NAME), cause: e });
        }
        throw e;
      }
      const m = parseManifest(bytes, uriOf(MANIFEST_NAME));
      return m.files.map((f) => ({ key: f.key, size: f.size, etag: f.etag, mtimeMs: f.mtimeMs })).sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    },
    stat: async (key) => {
      const s = await stat(key);
      return { key: s.key, size: s.size, etag: s.etag, mtimeMs: s.mtimeMs };
    },
    async open(key, info?: ObjectInfo): Promise<ByteSource> {
      checkKey(key);
      const meta: ObjectInfo & { strongEtag?: string } = info ?? (await stat(key));
      const u = uriOf(key);
      const limit = wholeReadLimit();
      let whole: Uint8Array | undefined;
      let transferred = 0;
      const seen = strongOf.get(key);
      const strong = meta.strongEtag ?? (seen && seen.etag === meta.etag ? seen.strong : undefined);
      const ifMatch: Record<string, string> = strong ? { 'if-match': strong } : {};
      return remoteSource(u, meta.size, async (offset, length) => {
        if (whole) return whole.slice(offset, offset + length);
        const res = await request('GET', key, { range: `bytes=${offset}-${offset + length - 1}`, ...ifMatch }, [200, 206]);
        if (res.status === 206) {
          const cr = parseContentRange(res.headers.get('content-range'));
          if (!cr || cr.start !== offset || cr.end !== offset + length - 1 || (cr.total !== undefined && cr.total !== meta.size)) {
            await res.body?.cancel();
            throw new ShardserveError('BadResponse', `${u}: asked for bytes ${offset}-${offset + length - 1} of ${meta.size}, the server sent Content-Range '${res.headers.get('content-range')}'`, { file: u });
          }
          const b = await bodyBytes(res, u, endpoint, timeoutMs);
          transferred += b.length;
          return b;
        }
        // HTTP 200: the server ignored Range and is sending the whole object.
        if (meta.size > limit) {
          await res.body?.cancel();
          throw new ShardserveError('RangeNotSupported', `${u}: the server ignores HTTP Range requests (answered 200 to a ranged GET); refusing to download the whole ${meta.size}-byte object for each read (limit ${limit} bytes, SHARDSERVE_HTTP_WHOLE_READ_LIMIT)`, { file: u });
        }
        const all = await bodyBytes(res, u, endpoint, timeoutMs);
        transferred += all.length;
        if (all.length !== meta.size) throw new TransientError('ShortBody', `${u}: expected ${meta.size} bytes, the server sent ${all.length}`, { file: u });
        whole = all;
        return whole.slice(offset, offset + length);
      }, () => transferred);
    },
    async readAll(key) {
      checkKey(key);
      const u = uriOf(key);
      return retried(u, async () => {
        const res = await request('GET', key);
        const expected = Number(res.headers.get('content-length'));
        const b = await bodyBytes(res, u, endpoint, timeoutMs);
        if (res.headers.get('content-length') !== null && Number.isSafeInteger(expected) && b.length !== expected) {
          throw new TransientError('ShortBody', `${u}: the server announced ${expected} bytes and sent ${b.length}`, { file: u });
        }
        return b;
      });
    },
  };
  return storage;
}
