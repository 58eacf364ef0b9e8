// The operator process: probes and metrics server, leader election, then the controller; graceful
// shutdown on SIGTERM/SIGINT (stop taking work, finish running reconciles, release the Lease).
import http from 'node:http';
import { hostname } from 'node:os';
import { Controller } from './controller.js';
import { KubeApi } from './kube.js';
import { loadCredentials } from './kubeconfig.js';
import { LeaderElector } from './leader.js';
import { jsonLogger, type Level, type Logger } from './logger.js';
import { OperatorMetrics } from './metrics.js';

export type OperatorConfig = {
  /** kubeconfig file; in-cluster configuration when unset (and KUBECONFIG is unset). */
  kubeconfig?: string;
  namespaces: string[] | 'all';
  /** host:port of /healthz, /readyz, /metrics. */
  listen: string;
  leaderElection: boolean;
  leaseNamespace: string;
  leaseName: string;
  identity: string;
  workers: number;
  resyncSeconds: number;
  logLevel: Level;
};

export const defaultConfig = (): OperatorConfig => ({
  namespaces: 'all',
  listen: '0.0.0.0:8080',
  leaderElection: true,
  leaseNamespace: process.env.POD_NAMESPACE ?? 'default',
  leaseName: 'shardserve-operator',
  identity: `${hostname()}-${process.pid}`,
  workers: 4,
  resyncSeconds: 300,
  logLevel: 'info',
});

export type RunningOperator = {
  port: number;
  metrics: OperatorMetrics;
  controller: () => Controller | undefined;
  leader: LeaderElector | undefined;
  stop: () => Promise<void>;
  /** Resolves when the operator stops on its own (lost leadership). */
  done: Promise<void>;
};

export async function runOperator(cfg: OperatorConfig, log: Logger = jsonLogger({ level: cfg.logLevel, base: { component: 'shardserve-operator' } })): Promise<RunningOperator> {
  const creds = loadCredentials(cfg.kubeconfig);
  const metrics = new OperatorMetrics();
  const api = new KubeApi(creds, (verb, kind) => metrics.wrote(verb, kind));
  const clock = () => new Date();
  let controller: Controller | undefined;
  let leader: LeaderElector | undefined;
  let stopping = false;

  const server = http.createServer(async (req, res) => {
    const url = (req.url ?? '/').split('?')[0];
    if (url === '/healthz') {
      const h = controller?.health() ?? { ok: true, informers: [] };
      res.writeHead(h.ok ? 200 : 500, { 'content-type': 'application/json' }).end(JSON.stringify({ ...h, leader: leader?.isLeader ?? !cfg.leaderElection }));
    } else if (url === '/readyz') {
      // Ready = serving probes and, when leading, caches synced; a standby is ready (it waits for the Lease).
      const ok = !stopping && (!controller || controller.synced());
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'not ready\n');
    } else if (url === '/metrics') {
      res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(await metrics.registry.metrics());
    } else {
      res.writeHead(404).end();
    }
  });
  const [host, portText] = cfg.listen.includes(':') ? [cfg.listen.slice(0, cfg.listen.lastIndexOf(':')), cfg.listen.slice(cfg.listen.lastIndexOf(':') + 1)] : ['0.0.0.0', cfg.listen];
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(portText), host, () => resolve());
  });
  const port = (server.address() as { port: number }).port;
  log.info('probes and metrics listening', { address: `${host}:${port}`, namespaces: cfg.namespaces === 'all' ? '*' : cfg.namespaces.join(',') });

  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));

  const stop = async () => {
    if (stopping) return;
    stopping = true;
    log.info('shutting down');
    await controller?.stop();
    await leader?.stop();
    metrics.leader.set(0);
    api.close();
    await new Promise<void>((r) => server.close(() => r()));
    server.closeAllConnections?.();
    resolveDone();
  };

  const startController = async () => {
    controller = new Controller({ api, namespaces: cfg.namespaces, clock, log, metrics, workers: cfg.workers, resyncMs: cfg.resyncSeconds * 1000, identity: cfg.identity });
    await controller.start();
    log.info('controller started; caches synced');
  };

  if (cfg.leaderElection) {
    leader = new LeaderElector({ api, namespace: cfg.leaseNamespace, name: cfg.leaseName, identity: cfg.identity, clock, log });
    leader.onLost(() => void stop());
    // Campaign in the background: a standby keeps serving probes while it waits.
    void leader.run().then(
      async () => {
        if (stopping) return;
        metrics.leader.set(1);
        await startController();
      },
      (e) => {
        if (!stopping) log.error('leader election ended', { error: String(e) });
      },
    ).catch((e) => {
      log.error('controller failed to start', { error: String(e) });
      void stop();
    });
  } else {
    metrics.leader.set(1);
    await startController();
  }

  return { port, metrics, controller: () => controller, leader, stop, done };
}
