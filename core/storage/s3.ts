import { createHash } from 'node:crypto';
import { AwsV4Signer } from 'aws4fetch';
import { ShardserveError } from '../errors.js';
import { MANIFEST_NAME } from './manifest.js';
import { bodyBytes, networkError, parseContentRange, remoteSource, requestTimeoutMs, retried } from './remote.js';
import { TransientError } from './retry.js';
import { resolveS3Config, type S3Config } from './s3-config.js';
import type { ByteSource } from './source.js';
import type { ObjectInfo, Storage } from './storage.js';

/**
 * A small S3 client over fetch: SigV4 by aws4fetch, path-style or virtual-hosted addressing, every
 * request under a deadline, failures mapped to ShardserveErrors that name the s3:// URI (never a
 * secret). Transient failures (throttling, 5xx, resets, timeouts) are retried with backoff + jitter.
 */
export class S3Client {
  readonly config: S3Config;
  private readonly timeoutMs: number;

  constructor(config: S3Config = resolveS3Config()) {
    this.config = config;
    this.timeoutMs = requestTimeoutMs();
  }

  /** URL of a bucket or object. */
  url(bucket: string, key = '', query = ''): string {
    const path = key ? '/' + key.split('/').map(encodeSegment).join('/') : '/';
    const q = query ? `?${query}` : '';
    if (this.config.pathStyle) return `${this.config.endpoint}/${encodeSegment(bucket)}${key ? path : ''}${q}`;
    const u = new URL(this.config.endpoint);
    return `${u.protocol}//${bucket}.${u.host}${path}${q}`;
  }

  /** One signed request with a deadline; HTTP errors become ShardserveErrors naming `uri`. */
  async request(method: string, uri: string, url: string, opts: { headers?: Record<string, string>; body?: Uint8Array; okStatus?: number[]; signal?: AbortSignal } = {}): Promise<Response> {
    const headers: Record<string, string> = { ...opts.headers };
    if (opts.body) headers['x-amz-content-sha256'] = createHash('sha256').update(opts.body).digest('hex');
    let reqHeaders: Headers | Record<string, string> = headers;
    if (this.config.credentials) {
      const signer = new AwsV4Signer({
        method,
        url,
        headers,
        body: opts.body as unknown as BodyInit | undefined,
        accessKeyId: this.config.credentials.accessKeyId,
        secretAccessKey: this.config.credentials.secretAccessKey,
        sessionToken: this.config.credentials.sessionToken,
        service: 's3',
        region: this.config.region,
      });
      reqHeaders = (await signer.sign()).headers;
    }
    const signal = opts.signal ? AbortSignal.any([opts.signal, AbortSignal.timeout(this.timeoutMs)]) : AbortSignal.timeout(this.timeoutMs);
    let res: Response;
    try {
      res = await fetch(url, { method, headers: reqHeaders, body: opts.body as unknown as BodyInit | undefined, signal });
    } catch (e) {
      throw networkError(e, uri, this.config.endpoint, this.timeoutMs);
    }
    if ((opts.okStatus ?? [200]).includes(res.status)) return res;
    const text = method === 'HEAD' ? '' : await res.text().catch(() => '');
    throw this.httpError(res.status, text, uri, method);
  }

  private httpError(status: number, xml: string, uri: string, method: string): ShardserveError {
    const code = /<Code>([^<]*)<\/Code>/.exec(xml)?.[1] ?? '';
    const message = decodeXml(/<Message>([^<]*)<\/Message>/.exec(xml)?.[1] ?? '');
    const detail = code ? ` (${code}${message ? `: ${message}` : ''})` : ` (HTTP ${status})`;
    const who = this.config.credentialSource;
    const opt = { file: uri };
    if (code === 'NoSuchBucket') return new ShardserveError('NoSuchBucket', `${uri}: the bucket does not exist at ${this.config.endpoint}${detail}`, opt);
    if (code === 'NoSuchKey' || status === 404) return new ShardserveError('NotFound', `${uri}: no such object${code ? detail : ' (NoSuchKey)'}`, opt);
    if (['InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken', 'InvalidToken', 'InvalidTokenId', 'ExpiredTokenException', 'TokenRefreshRequired', 'AuthorizationHeaderMalformed', 'InvalidSecurity'].includes(code)) {
      return new ShardserveError('BadCredentials', `${uri}: the S3 credentials were rejected${detail}; credentials from ${who}`, opt);
    }
    if (code === 'AccessDenied' || code === 'AllAccessDisabled' || status === 403) {
      return new ShardserveError('AccessDenied', `${uri}: access denied${detail}; credentials from ${who}`, opt);
    }
    if (code === 'PermanentRedirect' || code === 'IncorrectEndpoint' || status === 301) {
      return new ShardserveError('WrongRegion', `${uri}: the bucket lives elsewhere${detail}; set AWS_REGION or AWS_ENDPOINT_URL (now region ${this.config.region}, endpoint ${this.config.endpoint})`, opt);
    }
    if (status === 412 || code === 'PreconditionFailed') return new ShardserveError('ObjectChanged', `${uri}: the object changed while it was being read (ETag no longer matches)`, opt);
    if (status === 416 || code === 'InvalidRange') return new ShardserveError('OutOfRange', `${uri}: requested range is outside the object${detail}`, opt);
    if (status === 429 || status >= 500 || code === 'SlowDown' || code === 'RequestTimeout') {
      return new TransientError(status === 429 || code === 'SlowDown' ? 'Throttled' : 'ServerError', `${uri}: the S3 server answered ${status}${detail}`, opt);
    }
    return new ShardserveError('RequestFailed', `${uri}: S3 ${method} failed with HTTP ${status}${detail}`, opt);
  }

  /** Size and ETag of an object; a missing object is told apart from a missing bucket. */
  async head(bucket: string, key: string, uri: string): Promise<{ size: number; etag?: string }> {
    return retried(uri, async () => {
      try {
        const res = await this.request('HEAD', uri, this.url(bucket, key));
        const size = Number(res.headers.get('content-length'));
        if (!Number.isSafeInteger(size) || size < 0) throw new ShardserveError('BadResponse', `${uri}: the S3 server sent no Content-Length for HEAD`, { file: uri });
        return { size, etag: stripQuotes(res.headers.get('etag')) };
      } catch (e) {
        const code = (e as ShardserveError).code;
        if (code === 'NotFound') await this.checkBucket(bucket, uri);
        // A HEAD error has no body: ask again with a 1-byte GET to learn the S3 error code.
        if (code === 'AccessDenied' || code === 'RequestFailed') {
          const res = await this.request('GET', uri, this.url(bucket, key), { headers: { range: 'bytes=0-0' }, okStatus: [200, 206, 416] });
          await res.body?.cancel();
        }
        throw e;
      }
    });
  }

  /** Throws NoSuchBucket when the bucket is missing (used to explain a 404). */
  async checkBucket(bucket: string, uri: string): Promise<void> {
    const res = await fetchQuiet(() => this.request('HEAD', uri, this.url(bucket), { okStatus: [200, 403, 404] }));
    if (res?.status === 404) throw new ShardserveError('NoSuchBucket', `${uri}: bucket '${bucket}' does not exist at ${this.config.endpoint} (NoSuchBucket)`, { file: uri });
  }

  /** `length` bytes at `offset` (one ranged GET; verifies 206 + Content-Range). No retries here. */
  async getRange(bucket: string, key: string, uri: string, offset: number, length: number, etag?: string): Promise<Uint8Array> {
    const headers: Record<string, string> = { range: `bytes=${offset}-${offset + length - 1}` };
    if (etag) headers['if-match'] = `"${etag}"`;
    const res = await this.request('GET', uri, this.url(bucket, key), { headers, okStatus: [200, 206] });
    if (res.status === 206) {
      const cr = parseContentRange(res.headers.get('content-range'));
      if (!cr || cr.start !== offset || cr.end !== offset + length - 1) {
        await res.body?.cancel();
        throw new ShardserveError('BadResponse', `${uri}: asked for bytes ${offset}-${offset + length - 1}, the server sent Content-Range '${res.headers.get('content-range')}'`, { file: uri });
      }
    } else {
      await res.body?.cancel();
      throw new ShardserveError('RangeNotSupported', `${uri}: the S3 server ignored the Range header (HTTP 200)`, { file: uri });
    }
    return bodyBytes(res, uri, this.config.endpoint, this.timeoutMs);
  }

  async getObject(bucket: string, key: string, uri: string): Promise<Uint8Array> {
    return retried(uri, async () => {
      let res: Response;
      try {
        res = await this.request('GET', uri, this.url(bucket, key));
      } catch (e) {
        if ((e as ShardserveError).code === 'NotFound') await this.checkBucket(bucket, uri);
        throw e;
      }
      const expected = Number(res.headers.get('content-length'));
      const bytes = await bodyBytes(res, uri, this.config.endpoint, this.timeoutMs);
      if (Number.isSafeInteger(expected) && bytes.length !== expected) {
        throw new TransientError('ShortBody', `${uri}: the server announced ${expected} bytes and sent ${bytes.length}`, { file: uri });
      }
      return bytes;
    });
  }

  async putObject(bucket: string, key: string, uri: string, body: Uint8Array): Promise<string | undefined> {
    return retried(uri, async () => {
      const res = await this.request('PUT', uri, this.url(bucket, key), { body });
      await res.body?.cancel();
      return stripQuotes(res.headers.get('etag'));
    });
  }

  async deleteObject(bucket: string, key: string, uri: string): Promise<void> {
    await retried(uri, async () => {
      const res = await this.request('DELETE', uri, this.url(bucket, key), { okStatus: [200, 204] });
      await res.body?.cancel();
    });
  }

  /** Create a bucket (tests and `index` helpers); an existing bucket we own is fine. */
  async createBucket(bucket: string): Promise<void> {
    const uri = `s3://${bucket}`;
    await retried(uri, async () => {
      const res = await this.request('PUT', uri, this.url(bucket), { okStatus: [200, 409] });
      const text = await res.text();
      if (res.status === 409 && !/BucketAlreadyOwnedByYou/.test(text)) throw new ShardserveError('BucketExists', `${uri}: bucket exists and belongs to someone else`, { file: uri });
    });
  }

  /** ListObjectsV2 under `prefix`, following continuation tokens; `pageSize` is max-keys. */
  async list(bucket: string, prefix: string, uri: string, pageSize = 1000): Promise<{ key: string; size: number; etag?: string }[]> {
    const out: { key: string; size: number; etag?: string }[] = [];
    let token: string | undefined;
    for (let page = 0; page < 1_000_000; page++) {
      const q = new URLSearchParams({ 'list-type': '2', 'max-keys': String(pageSize), 'encoding-type': 'url' });
      if (prefix) q.set('prefix', prefix);
      if (token) q.set('continuation-token', token);
      const query = [...q.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([k, v]) => `${k}=${encodeSegment(v)}`).join('&');
      const xml = await retried(uri, async () => {
        const res = await this.request('GET', uri, this.url(bucket, '', query));
        return new TextDecoder().decode(await bodyBytes(res, uri, this.config.endpoint, this.timeoutMs));
      });
      for (const m of xml.matchAll(/<Contents>([\s\S]*?)<\/Contents>/g)) {
        const c = m[1];
        const key = decodeURIComponent(decodeXml(/<Key>([^<]*)<\/Key>/.exec(c)?.[1] ?? '').replace(/\+/g, ' '));
        const size = Number(/<Size>(\d+)<\/Size>/.exec(c)?.[1]);
        const etag = stripQuotes(decodeXml(/<ETag>([^<]*)<\/ETag>/.exec(c)?.[1] ?? '') || null);
        if (!key || !Number.isSafeInteger(size)) throw new ShardserveError('BadResponse', `${uri}: malformed ListObjectsV2 entry from the server`, { file: uri });
        out.push({ key, size, etag });
      }
      if (!/<IsTruncated>true<\/IsTruncated>/.test(xml)) return out;
      const next = /<NextContinuationToken>([^<]*)<\/NextContinuationToken>/.exec(xml)?.[1];
      if (!next) throw new ShardserveError('BadResponse', `${uri}: listing is truncated but the server sent no continuation token`, { file: uri });
      token = decodeXml(next);
    }
    throw new ShardserveError('BadResponse', `${uri}: listing did not end`, { file: uri });
  }
}

/** Parse `s3://bucket/prefix` into bucket and prefix (no leading/trailing slash). */
export function parseS3Uri(uri: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/?#]+)\/?([^?#]*)$/i.exec(uri);
  if (!m || !/^[a-z0-9][a-z0-9.\-_]{1,254}$/i.test(m[1])) {
    throw new ShardserveError('BadUri', `${uri}: expected s3://<bucket>/<prefix>`, { file: uri });
  }
  return { bucket: m[1], prefix: m[2].replace(/\/+$/, '') };
}

export interface S3StorageOptions {
  /** Use this client (its config) instead of one from the environment. */
  client?: S3Client;
  /** ListObjectsV2 max-keys (default 1000; SHARDSERVE_S3_LIST_PAGE_SIZE). */
  pageSize?: number;
}

/** `s3://bucket/prefix` as a Storage; keys are relative to the prefix. */
export async function openS3Storage(uri: string, opts: S3StorageOptions = {}): Promise<Storage> {
  const { bucket, prefix } = parseS3Uri(uri);
  const client = opts.client ?? new S3Client();
  const envPage = Number(process.env.SHARDSERVE_S3_LIST_PAGE_SIZE);
  const pageSize = opts.pageSize ?? (Number.isSafeInteger(envPage) && envPage > 0 ? envPage : 1000);
  const full = (key: string) => (prefix ? (key ? `${prefix}/${key}` : prefix) : key);
  const uriOf = (key: string) => `s3://${bucket}/${full(key)}`;
  const checkKey = (key: string) => {
    if (key.split('/').some((s) => s === '..')) throw new ShardserveError('BadKey', `${uri}: key '${key}' escapes the root`, { file: uri });
  };
  const storage: Storage = {
    uri,
    uriOf,
    async list(): Promise<ObjectInfo[]> {
      const listPrefix = prefix ? `${prefix}/` : '';
      const items = await client.list(bucket, listPrefix, uriOf(''), pageSize);
      return items
        .filter((o) => !o.key.endsWith('/') && o.key.split('/').pop() !== MANIFEST_NAME)
        .map((o) => ({ key: o.key.slice(listPrefix.length), size: o.size, etag: o.etag }))
        .sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    },
    async stat(key) {
      checkKey(key);
      const h = await client.head(bucket, full(key), uriOf(key));
      return { key, size: h.size, etag: h.etag };
    },
    async open(key, info?: ObjectInfo): Promise<ByteSource> {
      checkKey(key);
      const meta = info ?? (await storage.stat(key));
      const u = uriOf(key);
      return remoteSource(u, meta.size, (offset, length) => client.getRange(bucket, full(key), u, offset, length, meta.etag));
    },
    async readAll(key) {
      checkKey(key);
      return client.getObject(bucket, full(key), uriOf(key));
    },
    async write(key, bytes) {
      checkKey(key);
      await client.putObject(bucket, full(key), uriOf(key), bytes);
    },
  };
  return storage;
}

function encodeSegment(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

function stripQuotes(v: string | null): string | undefined {
  if (!v) return undefined;
  return v.replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

function decodeXml(s: string): string {
  return s.replace(/&(lt|gt|amp|quot|apos|#\d+|#x[0-9a-f]+);/gi, (_, e: string) => {
    const m: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };
    if (m[e.toLowerCase()]) return m[e.toLowerCase()];
    return String.fromCodePoint(e[1] === 'x' || e[1] === 'X' ? parseInt(e.slice(2), 16) : parseInt(e.slice(1), 10));
  });
}

async function fetchQuiet(fn: () => Promise<Response>): Promise<Response | undefined> {
  try {
    const r = await fn();
    await r.body?.cancel();
    return r;
  } catch {
    return undefined;
  }
}
