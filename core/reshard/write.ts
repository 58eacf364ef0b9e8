import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { CheckpointFormat, CheckpointIndex } from '../checkpoint/types.js';
import { createTensorFileWriter } from '../checkpoint/writer.js';
import { ShardserveError } from '../errors.js';
import { type Destination, planRank, type ReadPlan, sourceStagesFor } from '../plan/planner.js';
import { executePlan } from './execute.js';
import { CheckpointSource, type CheckpointSourceOptions, type DestinationChoice, resolveDestination } from './session.js';

export interface WriteOptions {
  format?: CheckpointFormat;
  /** .ckpt: MindSpore's crc_num trailer; safetensors: crc_num metadata. */
  crc?: boolean;
  concurrency?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface WrittenRank {
  rank: number;
  stage: number;
  path: string;
  readBytes: number;
  sliceBytes: number;
}

export const extensionOf = (format: CheckpointFormat) => (format === 'safetensors' ? 'safetensors' : 'ckpt');

interface PlannedRank {
  plan: ReadPlan;
  indexes: Map<number, CheckpointIndex>;
}

async function planAll(source: CheckpointSource, destination: Destination, ranks: number[]): Promise<PlannedRank[]> {
  const out: PlannedRank[] = [];
  for (const rank of ranks) {
    const { files, indexes } = await source.filesOf(sourceStagesFor(source.strategy, destination, rank));
    out.push({ plan: planRank({ source: source.strategy, files, destination, rank }), indexes });
  }
  return out;
}

/** Names the readers flagged as MindSpore Int4 (qint4x2) in any of the source files. */
function int4Names(indexes: Map<number, CheckpointIndex>): Set<string> {
  const names = new Set<string>();
  for (const index of indexes.values()) {
    for (const note of index.notes) {
      const m = /^tensor '(.+)' is Int4\b/.exec(note);
      if (m) names.add(m[1]);
    }
  }
  return names;
}

/** One destination file: planned tensors streamed into a positional writer, committed atomically. */
async function writeRank(planned: PlannedRank, path: string, opts: WriteOptions, progress: (delta: number) => void): Promise<void> {
  const format = opts.format ?? 'safetensors';
  const { plan, indexes } = planned;
  // str values (MindSpore ckpt only) come from the lowest source file the plan reads.
  const firstRank = Math.min(...indexes.keys());
  const strings = format === 'mindspore-ckpt' && Number.isFinite(firstRank) ? [...indexes.get(firstRank)!.strings.values()].map((s) => ({ name: s.name, value: s.value })) : [];
  // qint4x2 tensors travel as bytes; safetensors marks them the way MindSpore does (metadata name -> "Int4").
  const int4 = int4Names(indexes);
  const metadata: Record<string, string> = {};
  for (const t of plan.tensors) {
    if (!int4.has(t.name)) continue;
    if (format === 'mindspore-ckpt') throw new ShardserveError('Unsupported', `parameter '${t.name}' is Int4 (qint4x2); --format ckpt cannot write Int4 yet, use safetensors`, { param: t.name });
    metadata[t.name] = 'Int4';
  }
  const writer = await createTensorFileWriter(
    path,
    format,
    plan.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })),
    { crc: opts.crc, strings, metadata: Object.keys(metadata).length ? metadata : undefined },
  );
  try {
    let last = 0;
    await executePlan(plan, indexes, (t, data) => writer.writeAt(t.name, 0, data), {
      concurrency: opts.concurrency,
      onProgress: (done) => {
        progress(done - last);
        last = done;
      },
    });
    await writer.commit();
  } catch (e) {
    await writer.abort().catch(() => {});
    throw e;
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Reshards a training checkpoint for every inference rank: `<out>/rank_<r>/model.<ext>`. Every
 * rank is planned before anything is written; files are staged under `<out>` and moved into place
 * only when all succeeded, so a failure leaves nothing behind.
 */
export async function reshardCheckpoint(opts: CheckpointSourceOptions & DestinationChoice & WriteOptions & { out: string }): Promise<WrittenRank[]> {
  const source = await CheckpointSource.open(opts);
  const createdOut = !(await exists(opts.out));
  const staging = join(opts.out, `.shardserve-staging-${process.pid}`);
  try {
    const destination = await resolveDestination(source, opts);
    if (destination.kind === 'single') throw new ShardserveError('Usage', 'reshard needs a destination: --dst-strategy <file> or --world/--stages/--tp (use `merge` for a single device)');
    const world = destination.strategy.stageCount * destination.strategy.stageDevices;
    const planned = await planAll(source, destination, Array.from({ length: world }, (_, r) => r));
    const total = planned.reduce((s, p) => s + p.plan.sliceBytes, 0);
    let done = 0;
    const ext = extensionOf(opts.format ?? 'safetensors');
    await mkdir(staging, { recursive: true });
    for (const p of planned) {
      await mkdir(join(staging, `rank_${p.plan.rank}`), { recursive: true });
      await writeRank(p, join(staging, `rank_${p.plan.rank}`, `model.${ext}`), opts, (d) => opts.onProgress?.((done += d), total));
    }
    for (const p of planned) {
      await mkdir(join(opts.out, `rank_${p.plan.rank}`), { recursive: true });
      await rename(join(staging, `rank_${p.plan.rank}`, `model.${ext}`), join(opts.out, `rank_${p.plan.rank}`, `model.${ext}`));
    }
    await rm(staging, { recursive: true, force: true });
    return planned.map((p) => ({ rank: p.plan.rank, stage: p.plan.stage, path: join(opts.out, `rank_${p.plan.rank}`, `model.${ext}`), readBytes: p.plan.readBytes, sliceBytes: p.plan.sliceBytes }));
  } catch (e) {
    await rm(staging, { recursive: true, force: true }).catch(() => {});
    if (createdOut) await rm(opts.out, { recursive: true, force: true }).catch(() => {});
    throw e;
  } finally {
    await source.close();
  }
}

/** The format of a merge output: --format, else the file extension; they must agree. */
export function mergeFormat(out: string, format?: CheckpointFormat): CheckpointFormat {
  const byName: CheckpointFormat | undefined = out.endsWith('.ckpt') ? 'mindspore-ckpt' : out.endsWith('.safetensors') ? 'safetensors' : undefined;
  if (format && byName && format !== byName) throw new ShardserveError('Usage', `--out ${out} does not match --format ${format === 'safetensors' ? 'safetensors' : 'ckpt'}`);
  const chosen = format ?? byName;
  if (!chosen) throw new ShardserveError('Usage', `--out ${out}: name it .safetensors or .ckpt (or give --format)`);
  return chosen;
}

/** Single-device merge (MindSpore's predict_strategy=None): every full tensor in one file. */
export async function mergeCheckpoint(opts: CheckpointSourceOptions & WriteOptions & { out: string }): Promise<WrittenRank> {
  const format = mergeFormat(opts.out, opts.format);
  const source = await CheckpointSource.open(opts);
  try {
    const [planned] = await planAll(source, { kind: 'single' }, [0]);
    let done = 0;
    await writeRank(planned, opts.out, { ...opts, format }, (d) => opts.onProgress?.((done += d), planned.plan.sliceBytes));
    return { rank: 0, stage: 0, path: opts.out, readBytes: planned.plan.readBytes, sliceBytes: planned.plan.sliceBytes };
  } finally {
    await source.close();
  }
}
