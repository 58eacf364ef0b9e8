import { credentials, type ClientDuplexStream, type Client } from '@grpc/grpc-js';
import { EventEmitter } from 'node:events';
import { InferError } from '../errors.js';
import { NO_CHANNELZ, services } from '../protos.js';
import type { Tensor } from '../tensor.js';
import { errorFromWire, tensorFromWire, tensorToWire, type StageTiming } from './wire.js';

export interface StageLinkOptions {
  /** host:port of the next stage's leader rank. */
  address: string;
  toStage: number;
  /** Requests in flight on the link at most; more wait (backpressure) until their deadline. */
  window?: number;
  maxMessageBytes?: number;
  log?: (line: string) => void;
}

export interface StageResult {
  outputs: Tensor[];
  timings: StageTiming[];
}

interface Pending {
  resolve: (r: StageResult) => void;
  reject: (e: InferError) => void;
  cleanup: () => void;
}

/**
 * The one bidirectional stream from this stage to the next. Every request in flight shares it;
 * replies come back by id in any order. When the stream breaks, every request on it fails at once
 * with Unavailable (no request waits for a peer that is gone) and the link reconnects with backoff.
 */
export class StageLink extends EventEmitter {
  private client: Client & Record<string, any>;
  private stream: ClientDuplexStream<any, any> | undefined;
  private readonly pending = new Map<string, Pending>();
  private readonly waiting: Array<() => void> = [];
  private nextId = 1n;
  private closed = false;
  private backoffMs = 50;
  private reconnectTimer: NodeJS.Timeout | undefined;
  readonly window: number;
  connected = false;

  constructor(private readonly opts: StageLinkOptions) {
    super();
    this.window = opts.window ?? 32;
    const max = opts.maxMessageBytes ?? 256 * 1024 * 1024;
    this.client = new (services().stage)(opts.address, credentials.createInsecure(), {
      ...NO_CHANNELZ,
      'grpc.max_send_message_length': max,
      'grpc.max_receive_message_length': max,
      'grpc.keepalive_time_ms': 10_000,
      'grpc.keepalive_timeout_ms': 5_000,
      'grpc.initial_reconnect_backoff_ms': 50,
      'grpc.min_reconnect_backoff_ms': 50,
      'grpc.max_reconnect_backoff_ms': 1_000,
    }) as any;
  }

  get inflight(): number {
    return this.pending.size;
  }

  start(): void {
    this.connect();
  }

  private connect(): void {
    if (this.closed) return;
    this.client.waitForReady(Date.now() + 1_000, (err?: Error) => {
      if (this.closed) return;
      if (err) return this.scheduleReconnect();
      this.openStream();
    });
  }

  private openStream(): void {
    const stream = this.client.Forward() as ClientDuplexStream<any, any>;
    this.stream = stream;
    this.connected = true;
    this.backoffMs = 50;
    this.emit('connected');
    stream.on('data', (reply: any) => this.onReply(reply));
    const broken = (why: string) => {
      if (this.stream !== stream) return;
      this.stream = undefined;
      this.connected = false;
      this.failAll(new InferError('Unavailable', `stage ${this.opts.toStage} at ${this.opts.address} is unreachable: ${why}`));
      this.emit('disconnected', why);
      this.scheduleReconnect();
    };
    stream.on('error', (e: Error) => broken(e.message));
    stream.on('end', () => broken('stream ended'));
  }

  private scheduleReconnect(): void {
    if (this.closed || this.reconnectTimer) return;
    const delay = this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, 1_000);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.connect();
    }, delay);
    this.reconnectTimer.unref();
  }

  private onReply(reply: any): void {
    const p = this.pending.get(String(reply.id));
    if (!p) return; // cancelled or timed out already
    p.cleanup();
    if (reply.error) p.reject(errorFromWire(reply.error));
    else {
      p.resolve({
        outputs: reply.outputs.map(tensorFromWire),
        timings: reply.timings.map((t: any) => ({ stage: Number(t.stage), computeUs: Number(t.compute_us) })),
      });
    }
  }

  private failAll(e: InferError): void {
    const all = [...this.pending.values()];
    for (const p of all) {
      p.cleanup();
      p.reject(e);
    }
  }

  private release(): void {
    while (this.waiting.length > 0 && this.pending.size < this.window) this.waiting.shift()!();
  }

  /** Wait for a slot in the window, no later than the deadline. */
  private async slot(deadline: number, signal?: AbortSignal): Promise<void> {
    if (this.pending.size < this.window) return;
    await new Promise<void>((resolve, reject) => {
      const go = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waiting.splice(this.waiting.indexOf(go), 1);
        reject(new InferError('DeadlineExceeded', `deadline passed while waiting for a slot to stage ${this.opts.toStage}`));
      }, Math.max(0, deadline - Date.now()));
      const onAbort = () => {
        clearTimeout(timer);
        this.waiting.splice(this.waiting.indexOf(go), 1);
        reject(new InferError('Cancelled', 'request cancelled'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(go);
    });
  }

  /** Send one request down the pipeline; resolves with the model outputs the last stage returns. */
  async send(tensors: Tensor[], outputs: string[], deadline: number, signal?: AbortSignal): Promise<StageResult> {
    await this.slot(deadline, signal);
    const stream = this.stream;
    if (!stream || !this.connected) {
      throw new InferError('Unavailable', `stage ${this.opts.toStage} at ${this.opts.address} is not connected`);
    }
    const id = String(this.nextId++);
    const budgetUs = Math.max(1, Math.round((deadline - Date.now()) * 1000));
    return new Promise<StageResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        this.cancelRemote(id);
        reject(new InferError('DeadlineExceeded', `deadline passed waiting for stage ${this.opts.toStage}`));
      }, Math.max(0, deadline - Date.now()));
      const onAbort = () => {
        cleanup();
        this.cancelRemote(id);
        reject(new InferError('Cancelled', 'request cancelled'));
      };
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        this.pending.delete(id);
        this.release();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.pending.set(id, { resolve, reject, cleanup });
      stream.write({ id, request: { tensors: tensors.map(tensorToWire), budget_us: String(budgetUs), outputs } });
    });
  }

  private cancelRemote(id: string): void {
    try {
      this.stream?.write({ id, cancel: true });
    } catch {
      /* stream already gone: nothing to cancel */
    }
  }

  close(): void {
    this.closed = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.failAll(new InferError('Unavailable', 'rank is shutting down'));
    this.stream?.end();
    this.client.close();
  }
}
