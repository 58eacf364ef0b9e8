/**
 * What the request path needs of a cancellation signal. AbortSignal has this shape, so callers may
 * pass one; the path itself makes CancelSources, one per request at every stage: Node's
 * AbortController is an EventTarget, and making one cost about 8 µs of a stage's CPU per request in
 * a profile of the 64 KiB stage hop (15 µs at the front door, which made two), against well under
 * 1 µs for a CancelSource.
 */
export interface CancelSignal {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/**
 * A cancellation with AbortController's behaviour for the above: abort() runs each listener once, in
 * the order added; a listener added after the abort is never called (check `aborted` first).
 */
export class CancelSource implements CancelSignal {
  aborted = false;
  private listeners: Array<() => void> | undefined;

  get signal(): CancelSignal {
    return this;
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    const listeners = this.listeners;
    this.listeners = undefined;
    if (listeners) for (const listener of listeners) listener();
  }

  /** `once` is implied: an abort happens once. */
  addEventListener(_type: 'abort', listener: () => void, _options?: { once?: boolean }): void {
    if (!this.aborted) (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const i = this.listeners?.indexOf(listener) ?? -1;
    if (i >= 0) this.listeners!.splice(i, 1);
  }
}
