import { ShardserveError } from '../core/errors.js';
import { loadCheckpointStage } from './load-stage.js';
import { readRankConfig, readRankEnv } from './rank-env.js';
import { startRank, type RankHandle } from './rank.js';
import { writeTerminationMessage } from './termination.js';

/**
 * `shardserve rank`: the container entrypoint. Configured by the pod environment (DESIGN §5); runs
 * until SIGTERM/SIGINT, then drains (no new work, requests in flight finish) and exits 0. A fatal
 * error (bad configuration, a slice that cannot be loaded, a stage count that does not match the
 * strategy) goes to the termination log and exits 1.
 */
export async function serveRank(env: NodeJS.ProcessEnv = process.env, log: (line: string) => void = (l) => process.stderr.write(l + '\n')): Promise<number> {
  let handle: RankHandle | undefined;
  try {
    const rankEnv = readRankEnv(env);
    const config = await readRankConfig(rankEnv.configPath);
    const graceMs = Number(env.SHARDSERVE_DRAIN_SECONDS ?? 30) * 1000;
    handle = await startRank({
      env: rankEnv,
      config,
      loader: loadCheckpointStage,
      bindHost: env.SHARDSERVE_BIND_HOST ?? '0.0.0.0',
      httpPort: env.SHARDSERVE_HTTP_PORT !== undefined ? Number(env.SHARDSERVE_HTTP_PORT) : undefined,
      grpcPort: env.SHARDSERVE_GRPC_PORT !== undefined ? Number(env.SHARDSERVE_GRPC_PORT) : undefined,
      processEnv: env,
      log,
    });
    const h = handle;
    log(`rank ${rankEnv.rank}: stage ${h.position.stage} of ${rankEnv.pipelineStages}, rank port ${h.ports.rank}, http ${h.ports.http}` + (h.ports.grpc ? `, OIP gRPC ${h.ports.grpc}` : ''));
    const signalled = new Promise<string>((resolve) => {
      process.once('SIGTERM', () => resolve('SIGTERM'));
      process.once('SIGINT', () => resolve('SIGINT'));
      // Under `shardserve up`, a rank never outlives its supervisor (if it is killed, the ranks go too).
      const supervisor = Number(env.SHARDSERVE_SUPERVISOR_PID ?? 0);
      if (supervisor > 0) {
        const watch = setInterval(() => {
          if (process.ppid !== supervisor) {
            clearInterval(watch);
            resolve('supervisor exit');
          }
        }, 500);
        watch.unref();
      }
    });
    // A load failure ends the rank at once; otherwise serve until a signal.
    const outcome = await Promise.race([signalled, h.loaded.then(() => new Promise<string>(() => {}))]);
    await h.stop(`received ${outcome}`, graceMs);
    log(`rank ${rankEnv.rank}: stopped`);
    return 0;
  } catch (e) {
    const message = e instanceof Error ? e.message : String(e);
    writeTerminationMessage(message, env);
    await handle?.stop('fatal error', 0).catch(() => undefined);
    if (e instanceof ShardserveError) throw e;
    throw new ShardserveError('RankFailed', message, { cause: e });
  }
}
