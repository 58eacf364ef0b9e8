import { EventEmitter } from 'node:events';
import type { CancelSignal } from '../cancel.js';
import { InferError } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { decodeStageReply, frameStageMessage, type StageMessageObject } from './codec.js';
import { decodeGrpcMessage, GrpcStatus, MessageReader, H2_SETTINGS, writeFramed } from '../grpc-h2.js';
import type { HeaderFields } from '../h2/hpack.js';
import { connectH2, type H2Connection, H2Error, type H2Stream } from '../h2/server.js';
import { errorFromWire, tensorFromWire, tensorToWire, type StageTiming } from './wire.js';

export interface StageLinkOptions {
  /** host:port of the next stage's leader rank. */
  address: string;
  toStage: number;
  /** Requests in flight on the link at most; more wait (backpressure) until their deadline. */
  window?: number;
  maxMessageBytes?: number;
  log?: (line: string) => void;
  /** A PING every this many ms (default 10 s)... */
  keepaliveMs?: number;
  /** ...unanswered for this long (default 5 s) counts as a broken link. */
  keepaliveTimeoutMs?: number;
  /** TCP connection and the call's response headers within this long (default 1 s), else retry. */
  connectTimeoutMs?: number;
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

export const FORWARD_PATH = '/shardserve.rank.v1.StageService/Forward';

/**
 * The link from this stage to the next: one bidirectional gRPC call (StageService.Forward) on one
 * HTTP/2 connection of our own client (h2/), shared by every request in flight, with replies coming
 * back by id in any order. Both ends' windows are wide (16 MiB per stream, 64 MiB per connection),
 * so activations flow at full speed both ways between hosts; our client never stops reading its
 * socket, so one connection carries both directions (a node:http2 session stops reading while it
 * writes: with wide windows at both ends, large messages both ways stalled it).
 * When the connection or the call breaks, every request on the link fails at once with
 * Unavailable (no request waits for a peer that is gone) and the link reconnects with backoff
 * (50 ms doubling to 1 s). A PING every 10 s, unanswered for 5 s, counts as broken.
 */
export class StageLink extends EventEmitter {
  private connection: H2Connection | undefined;
  /** The Forward call, once the server has answered its headers. */
  private stream: H2Stream | undefined;
  private keepalive: NodeJS.Timeout | undefined;
  /** The deadline of the PING in flight, if any. */
  private pingTimer: NodeJS.Timeout | undefined;
  private readonly maxMessageBytes: number;
  private readonly pending = new Map<string, Pending>();
  private readonly waiting: Array<() => void> = [];
  private nextId = 1n;
  private closed = false;
  private backoffMs = 50;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private readonly peer: { host: string; port: number };
  readonly window: number;
  connected = false;

  constructor(private readonly opts: StageLinkOptions) {
    super();
    this.peer = splitAddress(opts.address);
    this.window = opts.window ?? 32;
    this.maxMessageBytes = opts.maxMessageBytes ?? 256 * 1024 * 1024;
  }

  get inflight(): number {
    return this.pending.size;
  }

  start(): void {
    this.connect();
  }

  private connect(): void {
    if (this.closed) return;
    const { host, port } = this.peer;
    let opened = false;
    const gone = (why: string) => {
      clearTimeout(timer);
      if (this.connection !== connection) return;
      this.connection = undefined;
      if (this.keepalive) clearInterval(this.keepalive);
      clearTimeout(this.pingTimer);
      connection.destroy();
      if (opened) this.broken(why);
      else this.scheduleReconnect();
    };
    const connection = connectH2(host, port, H2_SETTINGS, { onGoaway: () => gone('the peer is going away') });
    this.connection = connection;
    const connectMs = this.opts.connectTimeoutMs ?? 1_000;
    const timer = setTimeout(() => gone(`no connection within ${connectMs} ms`), connectMs);
    const socket = connection.socket;
    socket.on('error', (e: Error) => gone(e.message));
    socket.on('close', () => gone('connection closed'));
    socket.once('connect', () => {
      const stream = connection.request({ ':method': 'POST', ':scheme': 'http', ':authority': this.opts.address, ':path': FORWARD_PATH, 'content-type': 'application/grpc', te: 'trailers' });
      const messages = new MessageReader(this.maxMessageBytes, (b) => this.onReply(decodeStageReply(b)));
      stream.on('response', (headers: HeaderFields) => {
        const status = headers[':status'];
        if (status !== '200') return gone(`HTTP status ${status}`);
        if (headers['grpc-status'] !== undefined && headers['grpc-status'] !== '0') return gone(decodeGrpcMessage(headers['grpc-message'] ?? `gRPC status ${headers['grpc-status']}`));
        if (headers['grpc-status'] !== undefined) return gone('the call ended at once');
        // The call is up: requests may go.
        clearTimeout(timer);
        this.stream = stream;
        opened = true;
        this.connected = true;
        this.backoffMs = 50;
        const answerMs = this.opts.keepaliveTimeoutMs ?? 5_000;
        this.keepalive = setInterval(() => {
          const t = setTimeout(() => gone(`no ping answer within ${answerMs} ms`), answerMs);
          this.pingTimer = t;
          connection.ping(() => clearTimeout(t));
        }, this.opts.keepaliveMs ?? 10_000);
        this.keepalive.unref();
        this.emit('connected');
      });
      stream.on('data', (chunk: Buffer) => {
        try {
          messages.push(chunk);
        } catch (e) {
          gone((e as Error).message);
        }
      });
      stream.on('trailers', (t: HeaderFields) => {
        const code = Number(t['grpc-status'] ?? GrpcStatus.UNKNOWN);
        gone(code === GrpcStatus.OK ? 'stream ended' : decodeGrpcMessage(t['grpc-message'] ?? `gRPC status ${code}`));
      });
      stream.on('close', () => gone(stream.rstCode === H2Error.NO_ERROR ? 'stream ended' : `stream reset (HTTP/2 error ${stream.rstCode})`));
    });
  }

  private broken(why: string): void {
    if (!this.stream && !this.connected) return this.scheduleReconnect();
    this.stream = undefined;
    this.connected = false;
    this.failAll(new InferError('Unavailable', `stage ${this.opts.toStage} at ${this.opts.address} is unreachable: ${why}`));
    this.emit('disconnected', why);
    this.scheduleReconnect();
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
  private async slot(deadline: number, signal?: CancelSignal): Promise<void> {
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
  async send(tensors: Tensor[], outputs: string[], deadline: number, signal?: CancelSignal): Promise<StageResult> {
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
      this.write(stream, { id, request: { tensors: tensors.map(tensorToWire), budget_us: String(budgetUs), outputs } });
    });
  }

  private write(stream: H2Stream, message: StageMessageObject): void {
    writeFramed(stream, frameStageMessage(message), false);
  }

  private cancelRemote(id: string): void {
    const stream = this.stream;
    if (!stream || stream.destroyed) return; // stream already gone: nothing to cancel
    try {
      this.write(stream, { id, cancel: true });
    } catch {
      /* stream already gone: nothing to cancel */
    }
  }

  close(): void {
    this.closed = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.keepalive) clearInterval(this.keepalive);
    clearTimeout(this.pingTimer);
    this.failAll(new InferError('Unavailable', 'rank is shutting down'));
    const connection = this.connection;
    const stream = this.stream;
    this.connection = undefined;
    this.stream = undefined;
    this.connected = false;
    if (!connection) return;
    // End the call (the server answers with its trailers), then the connection once that is done.
    stream?.end();
    connection.goaway();
    setTimeout(() => connection.destroy(), 1_000).unref();
  }
}

/** host and port of "host:port" ("[v6]:port" too). */
export function splitAddress(address: string): { host: string; port: number } {
  const at = address.lastIndexOf(':');
  const port = Number(address.slice(at + 1));
  if (at <= 0 || !/^\d+$/.test(address.slice(at + 1)) || port <= 0 || port > 65535) throw new InferError('Internal', `stage ${address}: the next stage's address must be host:port`);
  return { host: address.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port };
}
