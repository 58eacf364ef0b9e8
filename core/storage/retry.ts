import { ShardserveError } from '../errors.js';

/**
 * Retry policy shared by the remote backends and readRanges: exponential backoff with full jitter.
 * Only failures marked transient (throttling, 5xx, timeouts, connection resets, short bodies) are
 * retried; everything else (NoSuchKey, AccessDenied, bad range, ...) fails at once.
 */
export interface RetryOptions {
  /** Total attempts including the first (default 4). */
  attempts?: number;
  /** First backoff in ms (default 100); doubles each attempt, capped at maxDelayMs. */
  baseDelayMs?: number;
  maxDelayMs?: number;
  signal?: AbortSignal;
  /** Called before each retry (for logging/counting); never given secrets. */
  onRetry?: (attempt: number, error: unknown, delayMs: number) => void;
}

/** A failure that may succeed when tried again. */
export class TransientError extends ShardserveError {
  readonly transient = true;
  constructor(code: string, message: string, options: { file?: string; cause?: unknown } = {}) {
    super(code, message, options);
  }
}

export function isTransient(e: unknown): boolean {
  return typeof e === 'object' && e !== null && (e as { transient?: unknown }).transient === true;
}

export const defaultRetry = { attempts: 4, baseDelayMs: 100, maxDelayMs: 2000 } as const;

/** Run `fn` until it succeeds, a non-transient error occurs, or the attempts are used up. */
export async function withRetry<T>(fn: (attempt: number) => Promise<T>, opts: RetryOptions = {}): Promise<T> {
  const attempts = Math.max(1, opts.attempts ?? defaultRetry.attempts);
  const base = opts.baseDelayMs ?? defaultRetry.baseDelayMs;
  const cap = opts.maxDelayMs ?? defaultRetry.maxDelayMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn(attempt);
    } catch (e) {
      if (!isTransient(e) || attempt >= attempts || opts.signal?.aborted) throw e;
      const delay = Math.random() * Math.min(cap, base * 2 ** (attempt - 1));
      opts.onRetry?.(attempt, e, delay);
      await sleep(delay, opts.signal);
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(signal!.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
