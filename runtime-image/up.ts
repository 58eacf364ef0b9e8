import type { RankConfig } from '../core/deployment.js';
import { ShardserveError } from '../core/errors.js';
import { loadStrategy } from '../core/reshard/session.js';
import { LocalGroup, type RankView } from './local-group.js';

export interface UpOptions {
  model: string;
  checkpoint: string;
  strategy: string;
  world?: number;
  stages?: number;
  tp?: number;
  grpcPort: number;
  httpPort: number;
  rankPort: number;
  modelName: string;
  cutTensors?: string[];
  /** Checkpoint name -> initializer name, for names that differ. */
  parameterNames?: Record<string, string>;
  host?: string;
  /** An encrypted .ckpt checkpoint: the key file every rank reads (its path, never the key). */
  decryption?: NonNullable<RankConfig['checkpoint']['decryption']>;
}

/** The rank configuration `up` hands every local rank, with the layout checked against the strategy. */
export async function upConfig(o: UpOptions): Promise<RankConfig> {
  const tp = o.tp ?? 1;
  if (tp !== 1) throw new ShardserveError('Unsupported', `--tp ${tp}: tensor-parallel stages are not supported yet (expected 1)`);
  const trained = (await loadStrategy(o.strategy)).stageCount;
  let stages = o.stages;
  if (stages === undefined) stages = o.world !== undefined ? o.world / tp : trained;
  // Checked here too (every rank checks it again) so a wrong layout fails before any process starts.
  if (!o.cutTensors?.length && trained > 1 && stages !== trained) {
    throw new ShardserveError('LayoutMismatch', `strategy has ${trained} stages, spec asks for ${stages} (${o.strategy})`);
  }
  if (!Number.isInteger(stages) || stages < 1) throw new ShardserveError('Usage', `--world ${o.world} is not a multiple of --tp ${tp}`);
  const world = o.world ?? stages * tp;
  if (world !== stages * tp) throw new ShardserveError('Usage', `--world ${world} must equal --stages ${stages} × --tp ${tp}`);
  return {
    modelName: o.modelName,
    model: { uri: o.model, ...(o.cutTensors?.length ? { cutTensors: o.cutTensors } : {}), ...(o.parameterNames ? { parameterNames: o.parameterNames } : {}) },
    checkpoint: { uri: o.checkpoint, strategy: o.strategy, ...(o.decryption ? { decryption: o.decryption } : {}) },
    parallelism: { pipelineStages: stages, tensorParallel: tp },
    serving: { grpcPort: o.grpcPort, httpPort: o.httpPort, rankPort: o.rankPort },
  };
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}

function line(v: RankView): string {
  const frac = v.totalBytes > 0 ? Math.min(1, v.loadedBytes / v.totalBytes) : v.state === 'READY' ? 1 : 0;
  const bar = '#'.repeat(Math.round(frac * 20)).padEnd(20, '.');
  const restarts = v.restarts ? `  restarts ${v.restarts}` : '';
  return `  rank ${v.rank}  ${v.state.padEnd(11)} [${bar}] ${bytes(v.loadedBytes).padStart(10)} / ${bytes(v.totalBytes).padEnd(10)}${restarts}  ${v.state === 'READY' ? '' : v.reason}`.slice(0, 160);
}

/**
 * Live view of the ranks while they load: redrawn in place on a terminal (rank log lines are printed
 * above it), a line per change otherwise (logs stay readable when piped). `freeze()` leaves the last
 * view on screen and returns to plain line output.
 */
export function progressDisplay(views: () => RankView[], stream: NodeJS.WriteStream = process.stderr) {
  let drawn = 0;
  let live = !!stream.isTTY;
  const last = new Map<number, string>();
  const erase = () => {
    if (drawn) stream.write(`\x1b[${drawn}A\r\x1b[J`);
    drawn = 0;
  };
  const draw = () => {
    const vs = views();
    for (const v of vs) stream.write(`${line(v)}\x1b[K\n`);
    drawn = vs.length;
  };
  return {
    tick() {
      if (live) {
        erase();
        draw();
        return;
      }
      for (const v of views()) {
        const key = `${v.state} ${v.reason}`;
        if (last.get(v.rank) !== key) stream.write(line(v).trimEnd() + '\n');
        last.set(v.rank, key);
      }
    },
    log(text: string) {
      if (!live) return void stream.write(text + '\n');
      erase();
      stream.write(text + '\n');
      draw();
    },
    freeze() {
      if (live) {
        erase();
        draw();
        for (const v of views()) last.set(v.rank, `${v.state} ${v.reason}`);
      } else {
        this.tick();
      }
      live = false;
      drawn = 0;
    },
  };
}

export { LocalGroup };
