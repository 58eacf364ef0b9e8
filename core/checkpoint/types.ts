import type { DType } from '../dtype.js';
import type { ByteSource } from '../storage/source.js';

/** A run of bytes inside a source file. */
export interface ByteRange {
  offset: number;
  length: number;
}

/**
 * One tensor of one checkpoint file, indexed without reading its payload. Its C-order data is the
 * concatenation of `pieces` (a .ckpt tensor over 512 MiB is split into several records).
 */
export interface TensorEntry {
  name: string;
  dtype: DType;
  /** Shape as stored in this file: the local slice shape for a sharded parameter; [] for a scalar. */
  shape: number[];
  pieces: ByteRange[];
  /** Total payload bytes (sum of pieces). */
  byteLength: number;
}

/** A non-tensor value a checkpoint may carry (MindSpore `str` params); kept for inspect/merge. */
export interface StringEntry {
  name: string;
  value: string;
}

export type CheckpointFormat = 'mindspore-ckpt' | 'safetensors';

export interface CheckpointIndex {
  format: CheckpointFormat;
  /** The source payload offsets refer to (for an encrypted .ckpt, the decrypted view). */
  source: ByteSource;
  tensors: Map<string, TensorEntry>;
  strings: Map<string, StringEntry>;
  /** Things skipped on purpose (maptensor, unknown tensor_type, ...), one line each, for inspect. */
  notes: string[];
  /** CRC trailer / safetensors crc_num status. */
  crc: 'absent' | 'verified' | 'not-checked';
  encryption: 'none' | 'AES-GCM' | 'AES-CBC' | 'SM4-CBC';
  /** safetensors __metadata__ (empty for .ckpt). */
  metadata: Record<string, string>;
}

export type DecryptionMode = 'AES-GCM' | 'AES-CBC' | 'SM4-CBC';

export interface DecryptionOptions {
  key: Uint8Array;
  mode?: DecryptionMode;
}
