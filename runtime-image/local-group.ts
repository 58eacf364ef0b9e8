import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { credentials, type Client } from '@grpc/grpc-js';
import type { RankConfig } from '../core/deployment.js';
import { ShardserveError } from '../core/errors.js';
import { RANK_NODE_FLAGS } from './node-flags.js';
import { PEER_CHANNEL_OPTIONS, services } from './protos.js';

const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'bin', 'shardserve.mjs');

export interface RankView {
  rank: number;
  pid?: number;
  state: string;
  reason: string;
  loadedBytes: number;
  totalBytes: number;
  restarts: number;
}

export interface LocalGroupOptions {
  config: RankConfig;
  /** Where the ranks listen; always loopback here. */
  host?: string;
  log?: (line: string) => void;
  /** Restarts of a rank that dies before it was ever ready, in a row, before the group gives up. */
  maxFailedStarts?: number;
  drainSeconds?: number;
  env?: NodeJS.ProcessEnv;
}

interface RankProc {
  rank: number;
  child?: ChildProcess;
  restarts: number;
  failedStarts: number;
  everReady: boolean;
  startedAt: number;
  lastError: string;
  status?: { state: string; reason: string; loaded: number; total: number; ready: boolean };
  client: Client & Record<string, any>;
  restartTimer?: NodeJS.Timeout;
}

/**
 * `shardserve up`'s supervisor: every rank of one pipeline group as a local child process
 * (`shardserve rank` with the same pod environment the operator gives), restarted with backoff when
 * it dies. Rank states come from each rank's Status RPC, the same one rank 0 uses for readiness.
 */
export class LocalGroup {
  private readonly ranks: RankProc[] = [];
  private readonly dir: string;
  private readonly configPath: string;
  private stopping = false;
  private pollTimer?: NodeJS.Timeout;
  private fatal?: (e: Error) => void;
  readonly failed: Promise<never>;
  readonly world: number;

  constructor(private readonly opts: LocalGroupOptions) {
    const { config } = opts;
    if (config.parallelism.tensorParallel !== 1) {
      throw new ShardserveError('Unsupported', `--tp ${config.parallelism.tensorParallel}: tensor-parallel stages are not supported yet (expected 1)`, { param: 'tp' });
    }
    this.world = config.parallelism.pipelineStages * config.parallelism.tensorParallel;
    this.dir = mkdtempSync(join(tmpdir(), 'shardserve-up-'));
    this.configPath = join(this.dir, 'rank-config.json');
    writeFileSync(this.configPath + '.tmp', JSON.stringify(config, null, 2));
    renameSync(this.configPath + '.tmp', this.configPath);
    this.failed = new Promise<never>((_, reject) => {
      this.fatal = reject;
    });
    this.failed.catch(() => undefined);
    for (let r = 0; r < this.world; r++) {
      const address = `${opts.host ?? '127.0.0.1'}:${config.serving.rankPort + r}`;
      this.ranks.push({ rank: r, restarts: 0, failedStarts: 0, everReady: false, startedAt: 0, lastError: '', client: new (services().stage)(address, credentials.createInsecure(), PEER_CHANNEL_OPTIONS) as any });
    }
  }

  private log(line: string): void {
    (this.opts.log ?? ((l) => process.stderr.write(l + '\n')))(line);
  }

  private spawnRank(p: RankProc): void {
    const { config } = this.opts;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...this.opts.env,
      SHARDSERVE_RANK: String(p.rank),
      SHARDSERVE_GROUP: '0',
      SHARDSERVE_WORLD_SIZE: String(this.world),
      SHARDSERVE_PIPELINE_STAGES: String(config.parallelism.pipelineStages),
      SHARDSERVE_TENSOR_PARALLEL: String(config.parallelism.tensorParallel),
      SHARDSERVE_PEERS: `${this.opts.host ?? '127.0.0.1'}:{port}`,
      SHARDSERVE_CONFIG: this.configPath,
      SHARDSERVE_BIND_HOST: this.opts.host ?? '127.0.0.1',
      // Only rank 0 serves the front door on the configured HTTP port; the others take any free one.
      SHARDSERVE_HTTP_PORT: p.rank === 0 ? String(config.serving.httpPort) : '0',
      SHARDSERVE_DRAIN_SECONDS: String(this.opts.drainSeconds ?? 10),
      SHARDSERVE_TERMINATION_LOG: join(this.dir, `rank-${p.rank}.termination-log`),
      SHARDSERVE_SUPERVISOR_PID: String(process.pid),
    };
    const child = spawn(process.execPath, [...RANK_NODE_FLAGS, CLI, 'rank'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    p.child = child;
    p.startedAt = Date.now();
    p.status = undefined;
    const relay = (stream: NodeJS.ReadableStream) => {
      let buf = '';
      stream.setEncoding?.('utf8');
      stream.on('data', (chunk: string) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          if (line.trim()) {
            p.lastError = line;
            this.log(`[rank ${p.rank}] ${line}`);
          }
        }
      });
    };
    relay(child.stdout!);
    relay(child.stderr!);
    child.on('exit', (code, signal) => this.onExit(p, child, code, signal));
  }

  private onExit(p: RankProc, child: ChildProcess, code: number | null, signal: string | null): void {
    if (p.child !== child) return;
    p.child = undefined;
    p.status = undefined;
    if (this.stopping) return;
    if (!p.everReady) p.failedStarts++;
    const max = this.opts.maxFailedStarts ?? 3;
    if (p.failedStarts >= max) {
      const why = p.lastError.replace(/^shardserve rank: /, '') || `exit ${code ?? signal}`;
      this.fatal?.(new ShardserveError('RankFailed', `rank ${p.rank} failed ${p.failedStarts} times before becoming ready: ${why}`));
      return;
    }
    // Backoff: quick first restart, doubling up to 10 s for a rank that keeps dying.
    const delay = Math.min(10_000, 250 * 2 ** Math.min(p.restarts, 6));
    this.log(`rank ${p.rank} exited (${signal ?? `code ${code}`}); restarting in ${delay} ms`);
    p.restarts++;
    p.restartTimer = setTimeout(() => {
      p.restartTimer = undefined;
      if (!this.stopping) this.spawnRank(p);
    }, delay);
  }

  start(): void {
    for (const p of this.ranks) this.spawnRank(p);
    const poll = () => {
      for (const p of this.ranks) {
        if (!p.child) continue;
        p.client.Status({}, { deadline: Date.now() + 500 }, (err: Error | null, s: any) => {
          if (err) return;
          p.status = { state: s.state, reason: s.reason, loaded: Number(s.loaded_bytes), total: Number(s.total_bytes), ready: s.ready };
          if (s.ready) {
            p.everReady = true;
            p.failedStarts = 0;
          }
        });
      }
      const settled = this.ranks.every((p) => p.child && p.status?.ready);
      this.pollTimer = setTimeout(poll, settled ? 1_000 : 200);
    };
    poll();
  }

  /** Each rank as the progress display shows it. */
  view(): RankView[] {
    return this.ranks.map((p) => ({
      rank: p.rank,
      pid: p.child?.pid,
      state: p.child ? (p.status?.state ?? 'STARTING') : this.stopping ? 'STOPPED' : 'RESTARTING',
      reason: p.status?.reason ?? '',
      loadedBytes: p.status?.loaded ?? 0,
      totalBytes: p.status?.total ?? 0,
      restarts: p.restarts,
    }));
  }

  pid(rank: number): number | undefined {
    return this.ranks[rank]?.child?.pid;
  }

  /** Readiness as clients see it: rank 0's /readyz (the whole group). */
  async ready(): Promise<boolean> {
    const port = this.opts.config.serving.httpPort;
    try {
      const r = await fetch(`http://${this.opts.host ?? '127.0.0.1'}:${port}/readyz`, { signal: AbortSignal.timeout(1_000) });
      await r.arrayBuffer();
      return r.status === 200;
    } catch {
      return false;
    }
  }

  async waitReady(timeoutMs: number, onTick?: () => void): Promise<void> {
    const until = Date.now() + timeoutMs;
    const ready = (async () => {
      while (Date.now() < until) {
        if (this.stopping) throw new ShardserveError('Stopped', 'the group is stopping');
        onTick?.();
        if (await this.ready()) return;
        await new Promise((r) => setTimeout(r, 100));
      }
      const waiting = this.view().filter((v) => v.state !== 'READY').map((v) => `rank ${v.rank}: ${v.state.toLowerCase()} ${v.reason}`.trim());
      throw new ShardserveError('Timeout', `the group was not ready after ${Math.round(timeoutMs / 1000)} s (${waiting.join('; ') || 'rank 0 not ready'})`);
    })();
    await Promise.race([ready, this.failed]);
  }

  /** Drain and stop every rank: rank 0 first (its front door drains), then the rest; kill stragglers. */
  async stop(graceMs = 15_000): Promise<void> {
    this.stopping = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    for (const p of this.ranks) if (p.restartTimer) clearTimeout(p.restartTimer);
    const exited = (p: RankProc) =>
      new Promise<void>((resolve) => {
        const child = p.child;
        if (!child || child.exitCode !== null || child.signalCode !== null) return resolve();
        const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
        child.once('exit', () => {
          clearTimeout(timer);
          resolve();
        });
        child.kill('SIGTERM');
      });
    await exited(this.ranks[0]);
    await Promise.all(this.ranks.slice(1).map(exited));
    for (const p of this.ranks) p.client.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
