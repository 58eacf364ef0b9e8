import { credentials, type Client } from '@grpc/grpc-js';
import { createServer, type Server as HttpServer } from 'node:http';
import type { RankConfig } from '../core/deployment.js';
import { ShardserveError } from '../core/errors.js';
import { DataPlane, type DataPlaneLimits } from './dataplane.js';
import { healthMethods, oipMethods } from './frontdoor/grpc.js';
import { restHandler } from './frontdoor/rest.js';
import { Lifecycle } from './lifecycle.js';
import { RankMetrics } from './metrics.js';
import { PEER_CHANNEL_OPTIONS, services } from './protos.js';
import { positionOf, stageLeader, type PipelineSpec, type RankPosition } from './pipeline/spec.js';
import { StageLink } from './pipeline/stage-link.js';
import { createGrpcServer, type GrpcServer } from './grpc-h2.js';
import { StageNode } from './pipeline/stage-node.js';
import { stageServiceImpl } from './pipeline/stage-service.js';
import type { InMemoryWeight } from '../core/onnx/bind.js';
import { createOrtStage, type OrtStageOptions, type StageExecutor } from './pipeline/stage-session.js';
import { peerAddress, type RankEnv } from './rank-env.js';

/** A full garbage collection when the process runs with --expose-gc (RANK_NODE_FLAGS); else nothing. */
function collectGarbage(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** What a rank needs to run its part: the whole pipeline's shape and its own stage as ONNX bytes. */
export interface LoadedStage {
  spec: PipelineSpec;
  /** The stage model's bytes (its large weights, if any, referenced as external data). */
  onnx: Uint8Array;
  /** Weights the model's external-data references name, handed to onnxruntime in memory (and then let go). */
  externalData?: InMemoryWeight[];
  /** Bytes of checkpoint slice this rank loaded (for status/metrics). */
  sliceBytes: number;
  /** Where the checkpoint load's time went: before the first read (strategy, layout, indexes, plan), and the reads. */
  checkpointMs?: { plan: number; reads: number };
}

export type StageLoader = (config: RankConfig, position: RankPosition, onProgress: (done: number, total: number) => void) => Promise<LoadedStage>;

export interface RankOptions {
  env: RankEnv;
  config: RankConfig;
  loader: StageLoader;
  /** Interface the servers bind to; 0.0.0.0 in a pod, 127.0.0.1 for `shardserve up`. */
  bindHost?: string;
  /** Overrides config.serving.httpPort (0 = any free port). */
  httpPort?: number;
  grpcPort?: number;
  limits?: Partial<DataPlaneLimits>;
  ort?: OrtStageOptions;
  /** Requests in flight on one stage-to-stage stream at most. */
  window?: number;
  log?: (line: string) => void;
  processEnv?: NodeJS.ProcessEnv;
}

export interface RankHandle {
  position: RankPosition;
  /** This rank: loaded, session built, next stage connected. */
  lifecycle: Lifecycle;
  /** Rank 0 only: the whole group (what ServerReady and /readyz answer). */
  plane?: DataPlane;
  metrics: RankMetrics;
  ports: { rank: number; grpc?: number; http: number };
  /** Resolves when loading finished (rejects with the fatal error if it failed). */
  loaded: Promise<void>;
  stop(reason: string, graceMs?: number): Promise<void>;
}

async function listenGrpc(server: GrpcServer, host: string, port: number): Promise<number> {
  return server.listen(host, port).catch((e: Error) => {
    throw new ShardserveError('PortInUse', `cannot listen on ${host}:${port}: ${e.message}`, { cause: e });
  });
}

async function listenHttp(server: HttpServer, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', (e) => reject(new ShardserveError('PortInUse', `cannot listen on ${host}:${port}: ${e.message}`, { cause: e })));
    server.listen(port, host, () => {
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : port);
    });
  });
}

function portOf(address: string): number {
  const m = /:(\d+)$/.exec(address);
  if (!m) throw new ShardserveError('Usage', `SHARDSERVE_PEERS gives '${address}', which has no :port`, { param: 'SHARDSERVE_PEERS' });
  return Number(m[1]);
}

/**
 * One rank: serve status at once, load its slice and build its stage session, connect to the next
 * stage, then serve. Rank 0 (stage 0) also hosts the Open Inference Protocol front door and decides
 * group readiness by polling every other rank's Status.
 */
export async function startRank(opts: RankOptions): Promise<RankHandle> {
  const { env, config } = opts;
  const log = opts.log ?? (() => {});
  const processEnv = opts.processEnv ?? process.env;
  const host = opts.bindHost ?? '0.0.0.0';
  if (config.parallelism.pipelineStages !== env.pipelineStages) {
    throw new ShardserveError('LayoutMismatch', `configuration has ${config.parallelism.pipelineStages} pipeline stages, SHARDSERVE_PIPELINE_STAGES says ${env.pipelineStages}`, { param: 'parallelism.pipelineStages' });
  }
  const position = positionOf(env.rank, env.pipelineStages, env.tensorParallel);
  const addressOf = (rank: number) => peerAddress(env.peers, rank, env.group, config.serving.rankPort, processEnv);
  const metrics = new RankMetrics({ rank: env.rank, group: env.group, stage: position.stage }, { defaultMetrics: true });
  const lifecycle = new Lifecycle();
  lifecycle.set('LOADING', 'loading checkpoint slice');
  let loadedBytes = 0;
  let totalBytes = 0;
  let node: StageNode | undefined;
  let executor: StageExecutor | undefined;
  let link: StageLink | undefined;
  let upstreamInflight = 0;
  const isHead = position.rank === 0;
  let stopping: Promise<void> | undefined;

  // Rank-to-rank server first: Status answers while loading, so rank 0 can show progress.
  const rankServer = createGrpcServer(stageServiceImpl({
    node: () => node,
    lifecycle,
    status: () => ({ rank: env.rank, group: env.group, stage: position.stage, loadedBytes, totalBytes, ready: lifecycle.accepting }),
    onRequest: (d) => {
      upstreamInflight += d;
    },
  }), { maxMessageBytes: 1024 * 1024 * 1024 });
  const ownAddress = addressOf(env.rank);
  const rankPort = await listenGrpc(rankServer, host, portOf(ownAddress));

  // Group readiness lives at the head; other ranks answer /readyz with their own state.
  const groupLifecycle = isHead ? new Lifecycle() : lifecycle;
  const plane = isHead ? new DataPlane(config.modelName, undefined, groupLifecycle, () => node, metrics, opts.limits) : undefined;
  let frontDoor: GrpcServer | undefined;
  let grpcPort: number | undefined;
  groupLifecycle.set('LOADING', 'loading checkpoint slice');
  const handler = restHandler({ plane, lifecycle, metrics });
  const httpServer = createServer((req, res) => void handler(req, res));
  const httpPort = await listenHttp(httpServer, host, opts.httpPort ?? config.serving.httpPort);

  let peerClients: Array<Client & Record<string, any>> = [];
  let pollTimer: NodeJS.Timeout | undefined;

  const evaluateOwn = () => {
    if (!node) return;
    if (node.downstreamConnected) lifecycle.set('READY', 'stage loaded and next stage connected');
    else if (lifecycle.state === 'LOADING') lifecycle.set('LOADING', `connecting to stage ${position.stage + 1}`);
    else lifecycle.set('UNAVAILABLE', `stage ${position.stage + 1} is unreachable`);
  };

  const loaded = (async () => {
    const t0 = Date.now();
    const stage = await opts.loader(config, position, (done, total) => {
      loadedBytes = done;
      totalBytes = total;
      metrics.loadedBytes.set(done);
      metrics.totalBytes.set(total);
      lifecycle.set('LOADING', `loading checkpoint slice: ${done} of ${total} bytes`);
    });
    if (stage.spec.stages.length !== env.pipelineStages) {
      throw new ShardserveError('LayoutMismatch', `strategy has ${stage.spec.stages.length} stages, spec asks for ${env.pipelineStages}`, { param: 'parallelism.pipelineStages' });
    }
    loadedBytes = totalBytes = stage.sliceBytes;
    metrics.loadedBytes.set(loadedBytes);
    metrics.totalBytes.set(totalBytes);
    lifecycle.set('LOADING', 'creating the stage session');
    // The load's garbage (the parsed source model, read buffers) goes before onnxruntime copies the
    // weights, and the slice's buffers right after: onnxruntime holds its own copy then. Unprompted,
    // V8 keeps them until some later full collection (a slice's worth of resident memory, or more).
    collectGarbage();
    executor = await createOrtStage(stage.onnx, opts.ort, stage.externalData);
    stage.externalData = undefined;
    collectGarbage();
    const isLast = position.stage === env.pipelineStages - 1;
    if (!isLast) {
      const next = stageLeader(position.stage + 1, env.tensorParallel);
      link = new StageLink({ address: addressOf(next), toStage: position.stage + 1, window: opts.window, log });
      link.on('connected', evaluateOwn);
      link.on('disconnected', (why) => {
        log(`rank ${env.rank}: lost stage ${position.stage + 1}: ${why}`);
        evaluateOwn();
      });
      link.start();
    }
    node = new StageNode(position.stage, stage.spec, executor, link, metrics);
    plane?.attach(stage.spec);
    const phases = stage.checkpointMs ? `; checkpoint plan ${Math.round(stage.checkpointMs.plan)} ms, reads ${Math.round(stage.checkpointMs.reads)} ms` : '';
    log(`rank ${env.rank}: stage ${position.stage} loaded in ${Date.now() - t0} ms (${stage.sliceBytes} bytes${phases})`);
    evaluateOwn();
  })();
  loaded.catch((e) => {
    lifecycle.set('FAILED', (e as Error).message);
    groupLifecycle.set('FAILED', (e as Error).message);
  });

  if (isHead) {
    // Our own size check answers INVALID_ARGUMENT with the limit; the transport's hard cap sits above it.
    frontDoor = createGrpcServer({ ...oipMethods(plane!, metrics), ...healthMethods(groupLifecycle) }, { maxMessageBytes: 4 * (plane!.limits.maxMessageBytes + 1024 * 1024) });
    grpcPort = await listenGrpc(frontDoor, host, opts.grpcPort ?? config.serving.grpcPort);

    // Group readiness: own stage ready and every other rank says it is ready.
    const others = Array.from({ length: env.worldSize - 1 }, (_, i) => i + 1);
    peerClients = others.map((r) => new (services().stage)(addressOf(r), credentials.createInsecure(), PEER_CHANNEL_OPTIONS) as any);
    const peerState = new Map<number, { ready: boolean; reason: string; loaded: number; total: number }>();
    const poll = () => {
      if (stopping) return;
      let pending = peerClients.length;
      const decide = () => {
        if (lifecycle.state === 'FAILED' || groupLifecycle.state === 'DRAINING') return;
        const notReady = others.filter((r) => !peerState.get(r)?.ready);
        if (lifecycle.state === 'LOADING') groupLifecycle.set('LOADING', `rank 0: ${lifecycle.reason}`);
        else if (!lifecycle.accepting) groupLifecycle.set('UNAVAILABLE', `rank 0: ${lifecycle.reason}`);
        else if (notReady.length > 0) {
          const r = notReady[0];
          groupLifecycle.set(peerState.get(r)?.reason.startsWith('loading') ? 'LOADING' : 'UNAVAILABLE', `rank ${r}: ${peerState.get(r)?.reason ?? 'not reachable'}`);
        } else groupLifecycle.set('READY', `all ${env.worldSize} ranks loaded and connected`);
        metrics.ready.set(groupLifecycle.accepting ? 1 : 0);
      };
      if (pending === 0) return decide();
      peerClients.forEach((c, i) => {
        c.Status({}, { deadline: Date.now() + 1_000 }, (err: Error | null, s: any) => {
          const r = others[i];
          if (err) peerState.set(r, { ready: false, reason: `not reachable (${(err as any).details ?? err.message})`, loaded: 0, total: 0 });
          else peerState.set(r, { ready: s.ready, reason: s.state === 'READY' ? 'ready' : s.state === 'LOADING' ? s.reason : `${s.state.toLowerCase()}: ${s.reason}`, loaded: Number(s.loaded_bytes), total: Number(s.total_bytes) });
          if (--pending === 0) decide();
        });
      });
    };
    // Often while the group comes up, once a second when it serves (a broken link already fails
    // requests at once; polling only updates what /readyz says).
    const tick = () => {
      if (stopping) return;
      poll();
      pollTimer = setTimeout(tick, groupLifecycle.accepting ? 1_000 : 200);
    };
    tick();
    lifecycle.on('change', () => poll());
  } else {
    lifecycle.on('change', () => metrics.ready.set(lifecycle.accepting ? 1 : 0));
  }

  const stop = (reason: string, graceMs = 30_000) => {
    stopping ??= (async () => {
      log(`rank ${env.rank}: draining (${reason})`);
      if (plane) await plane.drain(reason, graceMs);
      lifecycle.set('DRAINING', reason);
      // A middle or last stage finishes what its upstream already sent before it goes.
      const until = Date.now() + graceMs;
      while (upstreamInflight > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      if (pollTimer) clearTimeout(pollTimer);
      for (const c of peerClients) c.close();
      link?.close();
      await Promise.all([
        rankServer.close(1_000),
        frontDoor?.close(1_000),
        new Promise<void>((r) => {
          httpServer.close(() => r());
          httpServer.closeAllConnections();
        }),
      ]);
      await executor?.close().catch(() => undefined);
      lifecycle.set('STOPPED', reason);
      groupLifecycle.set('STOPPED', reason);
    })();
    return stopping;
  };

  return { position, lifecycle, plane, metrics, ports: { rank: rankPort, grpc: grpcPort, http: httpPort }, loaded, stop };
}

