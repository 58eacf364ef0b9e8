/**
 * Every failure a user can cause is a ShardserveError: a stable `code` for programs and a one-line
 * message for people that names the file, parameter or field and what was expected.
 */
export class ShardserveError extends Error {
  readonly code: string;
  /** The file or URI the error is about, when there is one. */
  readonly file?: string;
  /** The parameter (tensor) name the error is about, when there is one. */
  readonly param?: string;

  constructor(code: string, message: string, options: { file?: string; param?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ShardserveError';
    this.code = code;
    this.file = options.file;
    this.param = options.param;
  }
}

export function isShardserveError(e: unknown): e is ShardserveError {
  return e instanceof ShardserveError;
}
