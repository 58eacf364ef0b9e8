import { InferError, isErrorKind } from '../errors.js';
import { isOipDatatype, type Tensor } from '../tensor.js';

/** Tensor as the rank-to-rank proto carries it (no copy of the data). */
export function tensorToWire(t: Tensor) {
  return { name: t.name, datatype: t.datatype, shape: t.shape, data: Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength) };
}

export function tensorFromWire(w: { name: string; datatype: string; shape: Array<string | number>; data: Uint8Array }): Tensor {
  if (!isOipDatatype(w.datatype)) throw new InferError('Internal', `peer sent tensor '${w.name}' of unknown type '${w.datatype}'`);
  return { name: w.name, datatype: w.datatype, shape: w.shape.map(Number), data: w.data };
}

export function errorToWire(e: InferError) {
  return { kind: e.kind, message: e.message };
}

export function errorFromWire(w: { kind: string; message: string }): InferError {
  return new InferError(isErrorKind(w.kind) ? w.kind : 'Internal', w.message);
}

export interface StageTiming {
  stage: number;
  computeUs: number;
}
