import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ShardserveError } from '../errors.js';
import { MANIFEST_NAME } from './manifest.js';
import { openLocalSource, type ByteSource } from './source.js';

/** One object (file) under a storage root. */
export interface ObjectInfo {
  /** Path relative to the root, '/'-separated (e.g. `rank_3/net-1_10.ckpt`). */
  key: string;
  size: number;
  /** ETag or another change detector when the backend has one. */
  etag?: string;
  /** Last modification time (ms since epoch) when the backend tells it (local mtime, HTTP Last-Modified, S3 LastModified). */
  mtimeMs?: number;
}

/**
 * A root location (local directory, s3://bucket/prefix, http(s)://host/path) holding objects.
 * Checkpoint discovery, strategy directories and the model file all go through this.
 */
export interface Storage {
  /** The root as the user wrote it. */
  readonly uri: string;
  /**
   * Every object below the root, recursively, sorted by key. The `shardserve-index.json` manifest
   * is storage metadata and is never listed (so strategy-directory readers do not mistake it for a
   * JSON strategy); read it by name.
   */
  list(): Promise<ObjectInfo[]>;
  stat(key: string): Promise<ObjectInfo>;
  /**
   * A random-access view of one object. `info` (from stat/list) saves a round trip on remote
   * backends, and pins the object: reads fail if it changed since (ETag mismatch).
   */
  open(key: string, info?: ObjectInfo): Promise<ByteSource>;
  readAll(key: string): Promise<Uint8Array>;
  /** Write a whole object atomically (temp + rename locally, one PUT on S3); absent when read-only (HTTP). */
  write?(key: string, bytes: Uint8Array): Promise<void>;
  /** Full URI of a key, for messages. */
  uriOf(key: string): string;
}

export type StorageFactory = (uri: string) => Promise<Storage>;

const factories = new Map<string, StorageFactory>();

/** Backends shipped with shardserve, imported only when a URI of their scheme is opened. */
const builtin: Record<string, () => Promise<StorageFactory>> = {
  s3: async () => (await import('./s3.js')).openS3Storage,
  http: async () => (await import('./http.js')).openHttpStorage,
  https: async () => (await import('./http.js')).openHttpStorage,
};

/** Backends for other schemes (s3:, http:, https:) register themselves here. */
export function registerStorage(scheme: string, factory: StorageFactory): void {
  factories.set(scheme, factory);
}

/** Open a root location: a local path, file://, or any registered scheme. */
export async function openStorage(uri: string): Promise<Storage> {
  const m = /^([a-z][a-z0-9+.-]*):\/\//i.exec(uri);
  if (!m || m[1].toLowerCase() === 'file') return localStorage(m ? fileURLToPath(uri) : uri, uri);
  const scheme = m[1].toLowerCase();
  const factory = factories.get(scheme) ?? (builtin[scheme] ? await builtin[scheme]() : undefined);
  if (!factory) throw new ShardserveError('UnsupportedScheme', `${uri}: unsupported URI scheme '${m[1]}:' (expected a local path, file://, s3:// or http(s)://)`, { file: uri });
  return factory(uri);
}

/** Split a URI of one object into its parent root and key, and open the parent. */
export async function openParent(uri: string): Promise<{ storage: Storage; key: string }> {
  const trimmed = uri.replace(/\/+$/, '');
  const i = trimmed.lastIndexOf('/');
  const isUrl = /^[a-z][a-z0-9+.-]*:\/\//i.test(trimmed);
  if (i < 0 || (isUrl && trimmed.slice(0, i).endsWith(':/'))) {
    return { storage: await openStorage(isUrl ? trimmed : '.'), key: isUrl ? '' : trimmed };
  }
  return { storage: await openStorage(trimmed.slice(0, i) || '/'), key: trimmed.slice(i + 1) };
}

function localStorage(root: string, uri: string): Storage {
  const base = resolve(root);
  const pathOf = (key: string) => {
    const p = resolve(base, key);
    if (p !== base && !p.startsWith(base + sep)) throw new ShardserveError('BadKey', `${uri}: key '${key}' escapes the root`, { file: uri });
    return p;
  };
  const notFound = (key: string, e: unknown) => new ShardserveError('NotFound', `${join(root, key)}: no such file or directory`, { file: join(root, key), cause: e });
  return {
    uri,
    uriOf: (key) => (key ? join(root, key) : root),
    async list() {
      const out: ObjectInfo[] = [];
      // Sibling directories and files are visited concurrently (a checkpoint root is one level of
      // rank_<N>/ directories: their round trips to the file system overlap). When several fail, the
      // error is that of the first entry in directory order, so it does not depend on timing.
      const walk = async (dir: string, prefix: string): Promise<void> => {
        let entries;
        try {
          entries = await readdir(dir, { withFileTypes: true });
        } catch (e) {
          throw notFound(prefix, e);
        }
        entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
        const visits = await Promise.allSettled(entries.map(async (ent) => {
          const key = prefix ? `${prefix}/${ent.name}` : ent.name;
          if (ent.isDirectory()) await walk(join(dir, ent.name), key);
          else if (ent.isFile() && ent.name !== MANIFEST_NAME) {
            const st = await stat(join(dir, ent.name));
            out.push({ key, size: st.size, etag: `${st.size}-${st.mtimeMs}`, mtimeMs: st.mtimeMs });
          }
        }));
        const failed = visits.find((v): v is PromiseRejectedResult => v.status === 'rejected');
        if (failed) throw failed.reason;
      };
      await walk(base, '');
      return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    },
    async stat(key) {
      try {
        const s = await stat(pathOf(key));
        return { key, size: s.size, etag: `${s.size}-${s.mtimeMs}`, mtimeMs: s.mtimeMs };
      } catch (e) {
        throw notFound(key, e);
      }
    },
    open: (key) => openLocalSource(pathOf(key)),
    async write(key, bytes) {
      const p = pathOf(key);
      const tmp = `${p}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
      try {
        await mkdir(dirname(p), { recursive: true });
        await writeFile(tmp, bytes);
        await rename(tmp, p);
      } catch (e) {
        await rm(tmp, { force: true });
        throw new ShardserveError('WriteFailed', `${join(root, key)}: cannot write (${(e as Error).message})`, { file: join(root, key), cause: e });
      }
    },
    async readAll(key) {
      try {
        return await readFile(pathOf(key));
      } catch (e) {
        throw notFound(key, e);
      }
    },
  };
}
