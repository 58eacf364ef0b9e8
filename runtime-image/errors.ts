import { status as GrpcStatus } from '@grpc/grpc-js';

/**
 * What went wrong with one request, in the data plane's words. The transports (gRPC, REST, the
 * rank-to-rank stream) translate a kind to their own code in ONE place: `grpcCodeOf`/`httpStatusOf`.
 */
export type ErrorKind =
  | 'InvalidArgument'
  | 'NotFound'
  | 'Unavailable'
  | 'DeadlineExceeded'
  | 'Cancelled'
  | 'ResourceExhausted'
  | 'Unimplemented'
  | 'Internal';

export class InferError extends Error {
  readonly kind: ErrorKind;
  constructor(kind: ErrorKind, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'InferError';
    this.kind = kind;
  }
}

const GRPC: Record<ErrorKind, GrpcStatus> = {
  InvalidArgument: GrpcStatus.INVALID_ARGUMENT,
  NotFound: GrpcStatus.NOT_FOUND,
  Unavailable: GrpcStatus.UNAVAILABLE,
  DeadlineExceeded: GrpcStatus.DEADLINE_EXCEEDED,
  Cancelled: GrpcStatus.CANCELLED,
  ResourceExhausted: GrpcStatus.RESOURCE_EXHAUSTED,
  Unimplemented: GrpcStatus.UNIMPLEMENTED,
  Internal: GrpcStatus.INTERNAL,
};

const HTTP: Record<ErrorKind, number> = {
  InvalidArgument: 400,
  NotFound: 404,
  Unavailable: 503,
  DeadlineExceeded: 504,
  Cancelled: 499,
  ResourceExhausted: 429,
  Unimplemented: 501,
  Internal: 500,
};

export const ERROR_KINDS = Object.keys(GRPC) as ErrorKind[];

/** Any thrown value as an InferError (unknown failures become Internal, keeping the message). */
export function asInferError(e: unknown): InferError {
  if (e instanceof InferError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new InferError('Internal', message, { cause: e });
}

export function grpcCodeOf(kind: ErrorKind): GrpcStatus {
  return GRPC[kind];
}

export function httpStatusOf(kind: ErrorKind): number {
  return HTTP[kind];
}

/** The kind a gRPC status code from a peer means (for errors relayed across stage hops). */
export function kindOfGrpcCode(code: number): ErrorKind {
  for (const k of ERROR_KINDS) if (GRPC[k] === code) return k;
  return 'Internal';
}

export function isErrorKind(s: string): s is ErrorKind {
  return (ERROR_KINDS as string[]).includes(s);
}
