import type { CheckpointFormat, CheckpointIndex, TensorEntry } from '../checkpoint/types.js';
import { DTYPE_BYTES, type DType } from '../dtype.js';
import { ShardserveError } from '../errors.js';
import type { ByteSource } from './source.js';
import type { ObjectInfo, Storage } from './storage.js';

/**
 * `shardserve-index.json`, written by `shardserve index` at the root of a checkpoint location:
 * every object's key, size and change detector (ETag, or size-mtime for local files), and for each
 * plain `.ckpt`/`.safetensors` the record index, so a rank plans with one small GET of this file
 * instead of a round trip per record. An entry is used only while size and ETag still match.
 */
export const MANIFEST_NAME = 'shardserve-index.json';
export const MANIFEST_VERSION = 1;

export interface ManifestTensor {
  name: string;
  dtype: DType;
  shape: number[];
  /** [offset, length] pairs in the file. */
  pieces: [number, number][];
}

export interface ManifestIndex {
  format: CheckpointFormat;
  crc: 'absent' | 'not-checked';
  metadata: Record<string, string>;
  notes: string[];
  strings: { name: string; value: string }[];
  tensors: ManifestTensor[];
}

export interface ManifestFile {
  key: string;
  size: number;
  /** ETag (S3/HTTP) or `size-mtimeMs` (local); absent when the backend gives none. */
  etag?: string;
  /** Modification time (ms since epoch) when known; used only when the ETag kinds differ (see isFresh). */
  mtimeMs?: number;
  /** Record index of a plain checkpoint (never of an encrypted one: its offsets need the key). */
  index?: ManifestIndex;
  /** Why a .ckpt/.safetensors-named object was not indexed (e.g. a strategy file that is not a checkpoint). */
  skipped?: string;
  /** Set for an encrypted checkpoint, whose index is not stored. */
  encryption?: CheckpointIndex['encryption'];
}

export interface Manifest {
  version: typeof MANIFEST_VERSION;
  generator: string;
  files: ManifestFile[];
}

/** The serializable part of an index (the source is reattached when the manifest is used). */
export function indexToManifest(index: CheckpointIndex): ManifestIndex {
  return {
    format: index.format,
    crc: index.crc === 'absent' ? 'absent' : 'not-checked',
    metadata: { ...index.metadata },
    notes: [...index.notes],
    strings: [...index.strings.values()].map((s) => ({ name: s.name, value: s.value })),
    tensors: [...index.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: [...t.shape], pieces: t.pieces.map((p) => [p.offset, p.length] as [number, number]) })),
  };
}

/** Rebuild a CheckpointIndex over `source` from a manifest entry. */
export function indexFromManifest(m: ManifestIndex, source: ByteSource): CheckpointIndex {
  const tensors = new Map<string, TensorEntry>();
  for (const t of m.tensors) {
    const pieces = t.pieces.map(([offset, length]) => ({ offset, length }));
    tensors.set(t.name, { name: t.name, dtype: t.dtype, shape: [...t.shape], pieces, byteLength: pieces.reduce((a, p) => a + p.length, 0) });
  }
  return {
    format: m.format,
    source,
    tensors,
    strings: new Map(m.strings.map((s) => [s.name, { name: s.name, value: s.value }])),
    notes: [...m.notes],
    crc: m.crc,
    encryption: 'none',
    metadata: { ...m.metadata },
  };
}

/** Parse and validate a manifest; any deviation is an error naming the field. */
export function parseManifest(bytes: Uint8Array, uri: string): Manifest {
  const bad = (what: string) => new ShardserveError('BadManifest', `${uri}: ${what}`, { file: uri });
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch (e) {
    throw new ShardserveError('BadManifest', `${uri}: not valid JSON (${(e as Error).message})`, { file: uri, cause: e });
  }
  const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const isCount = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0;
  if (!isObj(doc)) throw bad('expected a JSON object');
  if (doc.version !== MANIFEST_VERSION) throw bad(`field 'version' is ${JSON.stringify(doc.version)}, expected ${MANIFEST_VERSION}`);
  if (!Array.isArray(doc.files)) throw bad("field 'files' must be an array");
  doc.files.forEach((f, i) => {
    const at = `files[${i}]`;
    if (!isObj(f)) throw bad(`${at} must be an object`);
    if (typeof f.key !== 'string' || f.key === '') throw bad(`${at}.key must be a non-empty string`);
    if (!isCount(f.size)) throw bad(`${at}.size must be a non-negative integer`);
    if (f.etag !== undefined && typeof f.etag !== 'string') throw bad(`${at}.etag must be a string`);
    if (f.mtimeMs !== undefined && !(typeof f.mtimeMs === 'number' && Number.isFinite(f.mtimeMs))) throw bad(`${at}.mtimeMs must be a number`);
    if (f.index === undefined) return;
    const ix = f.index;
    if (!isObj(ix)) throw bad(`${at}.index must be an object`);
    if (ix.format !== 'mindspore-ckpt' && ix.format !== 'safetensors') throw bad(`${at}.index.format must be 'mindspore-ckpt' or 'safetensors'`);
    if (ix.crc !== 'absent' && ix.crc !== 'not-checked') throw bad(`${at}.index.crc must be 'absent' or 'not-checked'`);
    if (!isObj(ix.metadata) || !Array.isArray(ix.notes) || !Array.isArray(ix.strings) || !Array.isArray(ix.tensors)) {
      throw bad(`${at}.index must have metadata, notes, strings and tensors`);
    }
    ix.tensors.forEach((t, j) => {
      const tat = `${at}.index.tensors[${j}]`;
      if (!isObj(t) || typeof t.name !== 'string') throw bad(`${tat}.name must be a string`);
      if (typeof t.dtype !== 'string' || !(t.dtype in DTYPE_BYTES)) throw bad(`${tat}.dtype ${JSON.stringify(t.dtype)} is not a known dtype`);
      if (!Array.isArray(t.shape) || !t.shape.every(isCount)) throw bad(`${tat}.shape must be an array of non-negative integers`);
      if (!Array.isArray(t.pieces) || !t.pieces.every((p) => Array.isArray(p) && p.length === 2 && isCount(p[0]) && isCount(p[1]) && p[0] + p[1] <= (f.size as number))) {
        throw bad(`${tat}.pieces must be [offset, length] pairs inside the file (size ${f.size})`);
      }
    });
  });
  return doc as unknown as Manifest;
}

const cache = new WeakMap<Storage, Promise<Manifest | undefined>>();

/**
 * The manifest at the root of `storage`, or undefined when there is none. Fetched once per Storage
 * object (one GET, however many checkpoints are opened through it).
 */
export function loadManifest(storage: Storage): Promise<Manifest | undefined> {
  let p = cache.get(storage);
  if (!p) {
    p = (async () => {
      let bytes: Uint8Array;
      try {
        bytes = await storage.readAll(MANIFEST_NAME);
      } catch (e) {
        if ((e as { code?: string }).code === 'NotFound' || (e as { code?: string }).code === 'NoSuchKey') return undefined;
        throw e;
      }
      return parseManifest(bytes, storage.uriOf(MANIFEST_NAME));
    })();
    cache.set(storage, p);
  }
  return p;
}

/** Forget a cached manifest (after writing a new one through the same Storage). */
export function forgetManifest(storage: Storage): void {
  cache.delete(storage);
}

const LOCAL_ETAG = /^\d+-\d+(\.\d+)?$/;

/**
 * Whether a manifest entry still describes the object. The size must match, and:
 * - when both change detectors are of the same kind (both local `size-mtime`, or both server ETags),
 *   they must be equal;
 * - when a manifest written from a local directory is read through a web server (local `size-mtime`
 *   there, the server's own ETag here), the modification times must agree to the second (HTTP
 *   Last-Modified has second precision). A server may truncate the file's time to the second or
 *   first round it to the millisecond (Node's `stat().mtime` does), which moves the second when the
 *   time lies in its last half millisecond: either reading agrees.
 * Anything else (no detector, no mtime) counts as stale: a stale index is never trusted.
 */
export function isFresh(entry: ManifestFile, info: ObjectInfo): boolean {
  if (entry.size !== info.size || entry.etag === undefined || info.etag === undefined) return false;
  if (LOCAL_ETAG.test(entry.etag) === LOCAL_ETAG.test(info.etag)) return entry.etag === info.etag;
  if (entry.mtimeMs === undefined || info.mtimeMs === undefined) return false;
  const seconds = (ms: number) => [Math.floor(ms / 1000), Math.floor(Math.round(ms) / 1000)];
  const [a, b] = [seconds(entry.mtimeMs), seconds(info.mtimeMs)];
  return a.some((s) => b.includes(s));
}

export function serializeManifest(m: Manifest): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(m) + '\n');
}
