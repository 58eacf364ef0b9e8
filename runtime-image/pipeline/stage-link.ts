import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as http2 from 'node:http2';
import type { CancelSignal } from '../cancel.js';
import { InferError } from '../errors.js';
import type { Tensor } from '../tensor.js';
import { decodeStageReply, frameStageMessage, type StageMessageObject } from './codec.js';
import { decodeGrpcMessage, GrpcStatus, H2_SETTINGS, MessageReader, REPLY_SINK_HEADER, REPLY_VIA_HEADER, SESSION_WINDOW, writeFramed } from '../grpc-h2.js';
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

export const FORWARD_PATH = '/shardserve.rank.v1.StageService/Forward';
const CONNECT_TIMEOUT_MS = 1_000;
const KEEPALIVE_MS = 10_000;
const KEEPALIVE_TIMEOUT_MS = 5_000;

/**
 * The link from this stage to the next: one bidirectional gRPC call (StageService.Forward, see
 * grpc-h2.ts) that every request in flight shares, with replies coming back by id in any order.
 * The call's requests and its replies travel on two HTTP/2 connections, each widened on its
 * receiving end, so activations flow at full speed both ways between hosts (one connection cannot do
 * both on Node 20; see REPLY_SINK_HEADER). When either breaks, every request on the link fails at
 * once with Unavailable (no request waits for a peer that is gone) and the link reconnects with
 * backoff (50 ms doubling to 1 s). An HTTP/2 ping every 10 s, unanswered for 5 s, counts as broken.
 */
export class StageLink extends EventEmitter {
  /** The connection that carries requests, and the Forward call on it. */
  private session: http2.ClientHttp2Session | undefined;
  private stream: http2.ClientHttp2Stream | undefined;
  /** The connection that carries replies. */
  private replySession: http2.ClientHttp2Session | undefined;
  private keepalive: NodeJS.Timeout | undefined;
  private readonly maxMessageBytes: number;
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
    const url = `http://${this.opts.address}`;
    const options: http2.ClientSessionOptions = { settings: H2_SETTINGS, maxSessionMemory: 1024 };
    const requests = http2.connect(url, options);
    const replies = http2.connect(url, options);
    this.session = requests;
    this.replySession = replies;
    const linkId = randomBytes(12).toString('hex');
    let opened = false;
    const timer = setTimeout(() => gone(`no connection within ${CONNECT_TIMEOUT_MS} ms`), CONNECT_TIMEOUT_MS);
    const gone = (why: string) => {
      clearTimeout(timer);
      if (this.session !== requests) return;
      this.session = undefined;
      this.replySession = undefined;
      if (this.keepalive) clearInterval(this.keepalive);
      requests.destroy();
      replies.destroy();
      if (opened) this.broken(why);
      else this.scheduleReconnect();
    };
    for (const session of [requests, replies]) {
      session.on('error', (e: Error) => gone(e.message));
      session.on('close', () => gone('connection closed'));
      session.on('goaway', () => gone('the peer is going away'));
    }
    // Both streams are read the same way: replies may come on either (on the call when a server does not split).
    const watch = (stream: http2.ClientHttp2Stream, onResponse?: () => void) => {
      const messages = new MessageReader(this.maxMessageBytes, (b) => this.onReply(decodeStageReply(b)));
      stream.on('response', (headers) => {
        const status = headers[':status'];
        if (status !== 200) gone(`HTTP status ${status}`);
        else if (headers['grpc-status'] !== undefined && headers['grpc-status'] !== '0') gone(decodeGrpcMessage(headers['grpc-message'] ?? `gRPC status ${headers['grpc-status']}`));
        else onResponse?.();
      });
      stream.on('data', (chunk: Buffer) => {
        try {
          messages.push(chunk);
        } catch (e) {
          gone((e as Error).message);
        }
      });
      stream.on('trailers', (t) => {
        const code = Number(t['grpc-status'] ?? GrpcStatus.UNKNOWN);
        gone(code === GrpcStatus.OK ? 'stream ended' : decodeGrpcMessage(t['grpc-message'] ?? `gRPC status ${code}`));
      });
      stream.on('error', (e: Error) => gone(e.message));
      stream.on('close', () => gone('stream ended'));
    };
    const headers = { ':method': 'POST', ':path': FORWARD_PATH, 'content-type': 'application/grpc', te: 'trailers' };
    // 1. The reply stream, on a connection whose receive window is widened: the server answers its
    //    headers once the stream is registered, and only then may the call name it.
    let sinkReady = false;
    let requestsUp = false;
    const openCall = () => {
      if (!sinkReady || !requestsUp || this.session !== requests) return;
      clearTimeout(timer);
      // 2. The call itself, on the other connection (left at the default window: it receives nothing large).
      const stream = requests.request({ ...headers, [REPLY_VIA_HEADER]: linkId });
      watch(stream);
      this.stream = stream;
      opened = true;
      this.connected = true;
      this.backoffMs = 50;
      this.keepalive = setInterval(() => {
        for (const session of [requests, replies]) {
          const t = setTimeout(() => session.destroy(new Error(`no ping answer within ${KEEPALIVE_TIMEOUT_MS} ms`)), KEEPALIVE_TIMEOUT_MS);
          try {
            session.ping(() => clearTimeout(t));
          } catch {
            clearTimeout(t);
          }
        }
      }, KEEPALIVE_MS);
      this.keepalive.unref();
      this.emit('connected');
    };
    replies.once('connect', () => {
      if (this.closed || this.session !== requests) return;
      replies.setLocalWindowSize(SESSION_WINDOW);
      const sink = replies.request({ ...headers, [REPLY_SINK_HEADER]: linkId });
      watch(sink, () => {
        sinkReady = true;
        openCall();
      });
    });
    requests.once('connect', () => {
      if (this.closed || this.session !== requests) return;
      requestsUp = true;
      openCall();
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

  private write(stream: http2.ClientHttp2Stream, message: StageMessageObject): void {
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
    this.failAll(new InferError('Unavailable', 'rank is shutting down'));
    const sessions = [this.session, this.replySession];
    this.session = undefined;
    this.replySession = undefined;
    this.stream = undefined;
    this.connected = false;
    for (const session of sessions) session?.close();
    setTimeout(() => sessions.forEach((session) => session?.destroy()), 1_000).unref();
  }
}
