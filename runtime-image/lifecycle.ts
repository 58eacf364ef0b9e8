import { EventEmitter } from 'node:events';

/**
 * A rank's lifecycle. Every state carries the reason it is in it, so /readyz, Status and the
 * operator can tell the user why (e.g. "loading slice: 40 MiB of 120 MiB", "stage 2 unreachable").
 * LOADING → READY ⇄ (NOT READY while a peer is unreachable, still serving nothing) → DRAINING → STOPPED;
 * FAILED is terminal (a fatal load error).
 */
export type LifecycleState = 'LOADING' | 'READY' | 'UNAVAILABLE' | 'DRAINING' | 'STOPPED' | 'FAILED';

export interface LifecycleSnapshot {
  state: LifecycleState;
  reason: string;
  since: number;
}

export class Lifecycle extends EventEmitter {
  private current: LifecycleSnapshot;
  constructor(private readonly clock: () => number = Date.now) {
    super();
    this.current = { state: 'LOADING', reason: 'starting', since: clock() };
  }

  get state(): LifecycleState {
    return this.current.state;
  }
  get reason(): string {
    return this.current.reason;
  }
  snapshot(): LifecycleSnapshot {
    return { ...this.current };
  }

  /** Accepting new work: READY only. */
  get accepting(): boolean {
    return this.current.state === 'READY';
  }
  /** The process is alive and answering (not stopped or failed). */
  get live(): boolean {
    return this.current.state !== 'STOPPED' && this.current.state !== 'FAILED';
  }

  set(state: LifecycleState, reason: string): void {
    const prev = this.current;
    // Once draining, only stopping may follow: a late "peer reachable" must not reopen the doors.
    if ((prev.state === 'DRAINING' && state !== 'STOPPED') || prev.state === 'STOPPED' || prev.state === 'FAILED') {
      if (!(prev.state === 'DRAINING' && state === 'FAILED')) return;
    }
    if (prev.state === state && prev.reason === reason) return;
    this.current = { state, reason, since: prev.state === state ? prev.since : this.clock() };
    this.emit('change', this.snapshot(), prev);
  }
}
