import { cipherModeOfMagic } from '../ckpt/decrypt.js';
import { indexCkpt } from '../ckpt/reader.js';
import { ShardserveError } from '../errors.js';
import { indexSafetensors } from '../safetensors/reader.js';
import {
  MANIFEST_NAME, MANIFEST_VERSION, forgetManifest, indexFromManifest, indexToManifest, isFresh, loadManifest, serializeManifest,
  type Manifest, type ManifestFile,
} from '../storage/manifest.js';
import type { ByteSource } from '../storage/source.js';
import type { ObjectInfo, Storage } from '../storage/storage.js';
import type { CheckpointFormat, CheckpointIndex, DecryptionOptions } from './types.js';

export interface OpenCheckpointOptions {
  format?: 'auto' | CheckpointFormat;
  decryption?: DecryptionOptions;
  /** Verify the CRC trailer / crc_num (reads the whole payload, so the manifest is not used). */
  verifyCrc?: boolean;
  /** Use `shardserve-index.json` when present and fresh (default true). */
  manifest?: boolean;
  /** Where a stale-manifest warning goes (default: stderr). */
  warn?: (message: string) => void;
  /** .ckpt: where records probably start, read ahead all at once (see IndexCkptOptions.prefetchRecords). */
  prefetchRecords?: readonly number[];
}

const defaultWarn = (m: string) => process.stderr.write(`shardserve: warning: ${m}\n`);

/** Format by extension, else by the first bytes: cipher magic or a protobuf record → ckpt; a JSON header → safetensors. */
export async function detectFormat(source: ByteSource, key: string): Promise<CheckpointFormat> {
  const lower = key.toLowerCase();
  if (lower.endsWith('.ckpt')) return 'mindspore-ckpt';
  if (lower.endsWith('.safetensors')) return 'safetensors';
  const head = await source.read(0, Math.min(9, source.size));
  if (head.length >= 4 && cipherModeOfMagic(new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true))) return 'mindspore-ckpt';
  if (head.length >= 9 && head[8] === 0x7b) {
    const n = new DataView(head.buffer, head.byteOffset, 8).getBigUint64(0, true);
    if (n >= 2n && 8n + n <= BigInt(source.size)) return 'safetensors';
  }
  // A plain ckpt is a protobuf `Checkpoint` whose first field is `value` (field 1, length-delimited).
  if (head.length >= 1 && head[0] === 0x0a) return 'mindspore-ckpt';
  throw new ShardserveError('UnknownFormat', `${source.uri}: neither a MindSpore .ckpt (protobuf or encrypted) nor a safetensors file (by name or by its first bytes)`, { file: source.uri });
}

/**
 * Index one checkpoint object of `storage` without reading its payload. When the storage root holds
 * a `shardserve-index.json` whose entry for `key` still matches the object (size and ETag), the
 * stored record index is used (no header reads at all); a stale entry is reported and re-indexed.
 */
export async function openCheckpointObject(storage: Storage, key: string, opts: OpenCheckpointOptions = {}): Promise<CheckpointIndex> {
  const warn = opts.warn ?? defaultWarn;
  const want = opts.format && opts.format !== 'auto' ? opts.format : undefined;
  let info: ObjectInfo | undefined;
  if (opts.manifest !== false && !opts.verifyCrc) {
    let manifest: Manifest | undefined;
    try {
      manifest = await loadManifest(storage);
    } catch (e) {
      if ((e as ShardserveError).code !== 'BadManifest') throw e;
      warn(`${(e as Error).message}; ignoring the manifest and reading record headers`);
    }
    const entry = manifest?.files.find((f) => f.key === key);
    if (entry) {
      info = await storage.stat(key);
      if (!isFresh(entry, info)) {
        warn(`${storage.uriOf(MANIFEST_NAME)} is stale for ${key} (size/ETag ${entry.size}/${entry.etag ?? '-'} there, ${info.size}/${info.etag ?? '-'} now); re-indexing it; run \`shardserve index\` again`);
      } else if (entry.index && (!want || want === entry.index.format)) {
        const source = await storage.open(key, info);
        const index = indexFromManifest(entry.index, source);
        if (opts.decryption?.key?.length && index.format === 'mindspore-ckpt') index.notes.push('a decryption key was given but the checkpoint is not encrypted');
        return index;
      }
    }
  }
  const source = await storage.open(key, info);
  try {
    const format = want ?? (await detectFormat(source, key));
    return format === 'safetensors'
      ? await indexSafetensors(source, { verifyCrc: opts.verifyCrc })
      : await indexCkpt(source, { decryption: opts.decryption, verifyCrc: opts.verifyCrc, prefetchRecords: opts.prefetchRecords });
  } catch (e) {
    await source.close().catch(() => {});
    throw e;
  }
}

const NOT_A_CHECKPOINT = new Set(['CorruptCheckpoint', 'CorruptSafetensors', 'UnknownFormat', 'EmptyFile']);

export interface BuildManifestOptions {
  /** Called after each object (for progress output). */
  onFile?: (file: ManifestFile, done: number, total: number) => void;
}

/**
 * Build the manifest of every object below `storage` (except the manifest itself): key, size, ETag,
 * and the record index of every plain .ckpt / .safetensors. Encrypted checkpoints are listed with
 * their encryption but no index (their offsets refer to plaintext that needs the key).
 */
export async function buildManifest(storage: Storage, opts: BuildManifestOptions = {}): Promise<Manifest> {
  const objects = (await storage.list()).filter((o) => o.key !== MANIFEST_NAME && !o.key.endsWith(`/${MANIFEST_NAME}`));
  const files: ManifestFile[] = [];
  for (const [i, o] of objects.entries()) {
    const info = o.etag ? o : await storage.stat(o.key);
    const entry: ManifestFile = { key: o.key, size: info.size, etag: info.etag, mtimeMs: info.mtimeMs ?? o.mtimeMs };
    if (/\.(ckpt|safetensors)$/i.test(o.key) && info.size > 0) {
      const source = await storage.open(o.key, info);
      try {
        const head = await source.read(0, Math.min(4, source.size));
        const mode = head.length === 4 ? cipherModeOfMagic(new DataView(head.buffer, head.byteOffset, 4).getUint32(0, true)) : undefined;
        if (mode && o.key.toLowerCase().endsWith('.ckpt')) entry.encryption = mode;
        else {
          try {
            const format = await detectFormat(source, o.key);
            const index = format === 'safetensors' ? await indexSafetensors(source) : await indexCkpt(source);
            entry.index = indexToManifest(index);
          } catch (e) {
            // A strategy file is a .ckpt too: such objects are listed, with the reason they carry no index.
            if (!(e instanceof ShardserveError) || !NOT_A_CHECKPOINT.has(e.code)) throw e;
            entry.skipped = e.message;
          }
        }
      } finally {
        await source.close().catch(() => {});
      }
    }
    files.push(entry);
    opts.onFile?.(entry, i + 1, objects.length);
  }
  return { version: MANIFEST_VERSION, generator: 'shardserve index', files };
}

/** Write the manifest at the root of `storage` (temp + rename locally, one PUT on S3). */
export async function writeManifest(storage: Storage, manifest: Manifest): Promise<string> {
  if (!storage.write) {
    throw new ShardserveError('ReadOnlyStorage', `${storage.uri}: cannot write ${MANIFEST_NAME} here (read-only backend); index a local copy or the s3:// location instead`, { file: storage.uri });
  }
  await storage.write(MANIFEST_NAME, serializeManifest(manifest));
  forgetManifest(storage);
  return storage.uriOf(MANIFEST_NAME);
}
