import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { checkRanksAgainstStrategy, discoverCheckpoint } from '../checkpoint/discover.js';
import { openCheckpointObject } from '../checkpoint/open.js';
import type { CheckpointFormat, CheckpointIndex, DecryptionOptions } from '../checkpoint/types.js';
import { ShardserveError } from '../errors.js';
import { fullShapeFromSlice } from '../layout/box.js';
import { deriveInferenceStrategy, resolveTarget } from '../layout/derive.js';
import { type Destination, type SourceFile } from '../plan/planner.js';
import { openParent, openStorage, type Storage } from '../storage/storage.js';
import { parseStrategyFiles } from '../strategy/reader.js';
import type { Strategy } from '../strategy/types.js';

const isUrl = (uri: string) => /^[a-z][a-z0-9+.-]*:\/\//i.test(uri) && !/^file:\/\//i.test(uri);
const STRATEGY_FILE = /\.(ckpt|json|pb|strategy)$/i;

/**
 * A strategy from one file, or from every strategy file (`.ckpt` protobuf or `.json`) in a directory
 * (per-stage or per-rank files), local or remote.
 */
export async function loadStrategy(uri: string): Promise<Strategy> {
  let directory: boolean;
  if (isUrl(uri)) {
    directory = uri.endsWith('/');
    if (!directory) {
      const { storage, key } = await openParent(uri);
      try {
        await storage.stat(key);
      } catch {
        directory = true;
      }
    }
  } else {
    const path = uri.startsWith('file://') ? new URL(uri).pathname : uri;
    try {
      directory = (await stat(path)).isDirectory();
    } catch {
      throw new ShardserveError('NotFound', `${uri}: no such strategy file or directory`, { file: uri });
    }
  }
  if (!directory) {
    const { storage, key } = await openParent(uri);
    return parseStrategyFiles([{ name: basename(key), bytes: await storage.readAll(key) }], uri);
  }
  const storage = await openStorage(uri);
  const keys = (await storage.list()).map((o) => o.key).filter((k) => STRATEGY_FILE.test(k));
  if (keys.length === 0) throw new ShardserveError('NoStrategy', `${uri}: no strategy files (.ckpt or .json) in this directory`, { file: uri });
  const files = [];
  for (const key of keys) files.push({ name: key, bytes: await storage.readAll(key) });
  return parseStrategyFiles(files, uri);
}

export interface CheckpointSourceOptions {
  /** Checkpoint root: rank_<N>/ directories (local path, file://, http(s)://, s3://). */
  checkpoint: string;
  /** Training strategy file or directory. */
  strategy: string;
  /** Format of the source files (default: by extension, else by content). */
  sourceFormat?: 'auto' | CheckpointFormat;
  decryption?: DecryptionOptions;
  verifyCrc?: boolean;
}

/**
 * A training checkpoint: its storage, strategy and rank files; indexes files on demand (once each)
 * so a destination rank opens only the files of the stages it reads.
 */
export class CheckpointSource {
  private readonly indexes = new Map<number, Promise<CheckpointIndex>>();

  private constructor(
    readonly storage: Storage,
    readonly strategy: Strategy,
    readonly rankKeys: Map<number, string>,
    private readonly opts: CheckpointSourceOptions,
  ) {}

  static async open(opts: CheckpointSourceOptions): Promise<CheckpointSource> {
    // The strategy and the checkpoint listing are fetched concurrently (round trips overlap on remote
    // storage); a strategy error is still the one reported when both fail, as when done in turn.
    const [st, listed] = await Promise.allSettled([
      loadStrategy(opts.strategy),
      (async () => {
        const storage = await openStorage(opts.checkpoint);
        return { storage, rankKeys: await discoverCheckpoint(storage) };
      })(),
    ]);
    if (st.status === 'rejected') throw st.reason;
    if (listed.status === 'rejected') throw listed.reason;
    const strategy = st.value;
    const { storage, rankKeys } = listed.value;
    checkRanksAgainstStrategy(rankKeys, strategy, opts.checkpoint);
    return new CheckpointSource(storage, strategy, rankKeys, opts);
  }

  /**
   * The index of one training rank's file (undefined when the rank directory is missing). `like`, a
   * file of the same job already indexed, tells where its records probably start: their headers are
   * then read all at once rather than one after the other (the index is checked as usual).
   */
  index(rank: number, like?: CheckpointIndex): Promise<CheckpointIndex> | undefined {
    const key = this.rankKeys.get(rank);
    if (key === undefined) return undefined;
    let p = this.indexes.get(rank);
    if (!p) {
      p = openCheckpointObject(this.storage, key, { format: this.opts.sourceFormat, decryption: this.opts.decryption, verifyCrc: this.opts.verifyCrc, prefetchRecords: like && recordStartsOf(like) });
      p.catch(() => {});
      this.indexes.set(rank, p);
    }
    return p;
  }

  /**
   * Indexes of the given present ranks, 8 at a time. When files fail, the error is that of the
   * lowest failing rank, whichever finished first: the same input always gives the same message.
   * `likeOf(rank)`: an indexed file laid out like that rank's, if any (see `index`).
   */
  async indexesOf(ranks: readonly number[], likeOf?: (rank: number) => CheckpointIndex | undefined): Promise<Map<number, CheckpointIndex>> {
    const sorted = [...ranks].sort((a, b) => a - b);
    const indexes = new Map<number, CheckpointIndex>();
    const failures = new Map<number, unknown>();
    let next = 0;
    const worker = async () => {
      while (next < sorted.length && failures.size === 0) {
        const rank = sorted[next++];
        try {
          indexes.set(rank, await this.index(rank, likeOf?.(rank))!);
        } catch (e) {
          failures.set(rank, e);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(8, sorted.length) }, worker));
    if (failures.size > 0) throw failures.get(Math.min(...failures.keys()));
    return indexes;
  }

  /** Indexes of every present file of the given source stages, a few at a time. */
  async filesOf(stages: number[]): Promise<{ files: Map<number, SourceFile>; indexes: Map<number, CheckpointIndex> }> {
    const ranks = stages.flatMap((s) => this.presentRanks(s));
    const indexes = await this.indexesOf(ranks);
    const files = new Map<number, SourceFile>();
    for (const rank of ranks) {
      const index = indexes.get(rank)!;
      files.set(rank, { rank, uri: this.storage.uriOf(this.rankKeys.get(rank)!), tensors: index.tensors });
    }
    return { files, indexes };
  }

  /** Training ranks whose files have been indexed (or are being indexed) so far. */
  get indexedRanks(): number[] {
    return [...this.indexes.keys()].sort((a, b) => a - b);
  }

  /**
   * The rank whose file stands for `stage` (its shapes, its tensor list): `prefer(stage)` when that
   * file is present, else the stage's first present file. Any file of a stage would do; preferring
   * one the caller is going to read anyway spares indexing another.
   */
  representative(stage: number, prefer?: (stage: number) => number): number | undefined {
    const present = this.presentRanks(stage);
    const want = prefer?.(stage);
    return want !== undefined && present.includes(want) ? want : present[0];
  }

  /** Training ranks of `stage` whose files are present, in order. */
  presentRanks(stage: number): number[] {
    const d = this.strategy.stageDevices;
    return [...this.rankKeys.keys()].filter((r) => r >= stage * d && r < (stage + 1) * d).sort((a, b) => a - b);
  }

  /**
   * Full shapes of parameters the strategy does not state, from one present file of each stage
   * (see `representative`).
   */
  async fullShapes(prefer?: (stage: number) => number): Promise<Map<string, number[]>> {
    const shapes = new Map<string, number[]>();
    const need = [...this.strategy.params.values()].filter((p) => !p.stages.some((s) => p.layoutByStage.get(s)!.tensorShape));
    for (const p of this.strategy.params.values()) {
      const known = p.stages.map((s) => p.layoutByStage.get(s)!.tensorShape).find((x) => x);
      if (known) shapes.set(p.name, known);
    }
    const stages = new Set(need.flatMap((p) => p.stages));
    for (const stage of [...stages].sort((a, b) => a - b)) {
      const first = stage * this.strategy.stageDevices;
      const rank = this.representative(stage, prefer);
      if (rank === undefined) continue;
      const index = await this.index(rank)!;
      for (const p of need) {
        const layout = p.layoutByStage.get(stage);
        const entry = index.tensors.get(p.name);
        if (!layout || !entry || shapes.has(p.name)) continue;
        shapes.set(p.name, fullShapeFromSlice(layout, entry.shape, rank - first, { param: p.name, file: this.storage.uriOf(this.rankKeys.get(rank)!) }));
      }
    }
    return shapes;
  }

  async close(): Promise<void> {
    for (const p of this.indexes.values()) {
      try {
        await (await p).source.close();
      } catch {
        // already reported by whoever awaited it
      }
    }
  }
}

/**
 * Where the records of a plain .ckpt laid out like `index` start: the file's start and the end of
 * each tensor payload (MindSpore writes a record's tensor_content last). Undefined for other files.
 */
function recordStartsOf(index: CheckpointIndex): number[] | undefined {
  if (index.format !== 'mindspore-ckpt' || index.encryption !== 'none') return undefined;
  const starts = [0];
  for (const t of index.tensors.values()) for (const p of t.pieces) starts.push(p.offset + p.length);
  return starts;
}

export interface DestinationChoice {
  /** A destination strategy file (MindSpore JSON or protobuf), e.g. from infer_predict_layout. */
  dstStrategy?: string;
  /** Or a target to derive it from the training strategy (`shardserve layout`). */
  target?: { world?: number; stages?: number; tp?: number };
}

/**
 * The destination of a reshard: a strategy file, a derived layout, or (neither) a single device.
 * `prefer` picks which file of a stage gives the shapes a derived layout needs (see `fullShapes`).
 */
export async function resolveDestination(source: CheckpointSource, choice: DestinationChoice, prefer?: (stage: number) => number): Promise<Destination> {
  if (choice.dstStrategy && choice.target) throw new ShardserveError('Usage', 'give either --dst-strategy or --world/--stages/--tp, not both');
  if (choice.dstStrategy) {
    const strategy = await loadStrategy(choice.dstStrategy);
    if (strategy.stageCount > 1 && strategy.stageCount !== source.strategy.stageCount) {
      throw new ShardserveError('StageMismatch', `${choice.dstStrategy}: has ${strategy.stageCount} pipeline stages but the training strategy ${source.strategy.uri} has ${source.strategy.stageCount}`, { file: choice.dstStrategy });
    }
    return { kind: 'strategy', strategy };
  }
  if (choice.target) {
    const target = resolveTarget(source.strategy, choice.target);
    return { kind: 'strategy', strategy: deriveInferenceStrategy(source.strategy, target, await source.fullShapes(prefer)) };
  }
  return { kind: 'single' };
}
