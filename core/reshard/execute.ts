import type { CheckpointIndex } from '../checkpoint/types.js';
import { ShardserveError } from '../errors.js';
import type { ReadPlan, TensorPlan } from '../plan/planner.js';
import { forEachRun, tensorRunToFile } from '../plan/runs.js';
import { readRanges } from '../storage/ranged-read.js';

export interface ExecuteOptions {
  /** Reads in flight per source file (default 4). */
  concurrency?: number;
  /** Gap (bytes) below which two reads of one file become one request (default 0 for local files, 64 KiB for remote ones). */
  coalesceGap?: number;
  /** Destination tensors are filled in batches of about this many bytes (default 64 MiB), so memory stays near one batch. */
  batchBytes?: number;
  onProgress?: (doneBytes: number, totalBytes: number) => void;
  signal?: AbortSignal;
}

export interface ExecuteStats {
  /** Bytes the plan asked for. */
  readBytes: number;
  /** Bytes actually fetched from the sources (includes coalescing gaps). */
  bytesTransferred: number;
  requests: number;
}

interface Run {
  fileOffset: number;
  length: number;
  dst: Uint8Array;
  dstOffset: number;
}

function isRemote(uri: string): boolean {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(uri) && !uri.startsWith('file://');
}

/**
 * Performs a read plan: fills each destination tensor from exactly the planned byte ranges of the
 * source files and hands it to `consume` (in plan order). Only one batch of destination tensors is
 * held at a time, plus the reads in flight.
 */
export async function executePlan(
  plan: ReadPlan,
  sources: Map<number, CheckpointIndex>,
  consume: (tensor: TensorPlan, data: Uint8Array) => Promise<void> | void,
  opts: ExecuteOptions = {},
): Promise<ExecuteStats> {
  const batchBytes = opts.batchBytes ?? 64 * 1024 * 1024;
  const stats: ExecuteStats = { readBytes: 0, bytesTransferred: 0, requests: 0 };
  let done = 0;
  opts.onProgress?.(0, plan.sliceBytes);
  let i = 0;
  while (i < plan.tensors.length) {
    const batch: TensorPlan[] = [];
    let bytes = 0;
    while (i < plan.tensors.length && (batch.length === 0 || bytes + plan.tensors[i].byteLength <= batchBytes)) {
      bytes += plan.tensors[i].byteLength;
      batch.push(plan.tensors[i++]);
    }
    const buffers = batch.map((t) => new Uint8Array(t.byteLength));
    const runsByRank = new Map<number, Run[]>();
    batch.forEach((t, bi) => {
      for (const op of t.copies) {
        const index = sources.get(op.rank);
        const entry = index?.tensors.get(t.name);
        if (!index || !entry) throw new ShardserveError('Internal', `parameter '${t.name}': the plan reads rank ${op.rank}, which was not opened`, { param: t.name });
        const runs = runsByRank.get(op.rank) ?? [];
        runsByRank.set(op.rank, runs);
        forEachRun(op, (srcOffset, dstOffset, length) =>
          tensorRunToFile(entry, srcOffset, length, (fileOffset, tensorOffset, len) =>
            runs.push({ fileOffset, length: len, dst: buffers[bi], dstOffset: dstOffset + (tensorOffset - srcOffset) })));
      }
    });
    await Promise.all([...runsByRank.entries()].map(async ([rank, runs]) => {
      const source = sources.get(rank)!.source;
      runs.sort((a, b) => a.fileOffset - b.fileOffset);
      // Touching runs become one range; the sink scatters a range back into its runs.
      const groups: { offset: number; length: number; runs: Run[] }[] = [];
      for (const run of runs) {
        const last = groups[groups.length - 1];
        if (last && run.fileOffset === last.offset + last.length) {
          last.length += run.length;
          last.runs.push(run);
        } else {
          groups.push({ offset: run.fileOffset, length: run.length, runs: [run] });
        }
      }
      const byOffset = new Map(groups.map((g) => [g.offset, g]));
      const result = await readRanges(
        source,
        groups.map((g) => ({ offset: g.offset, length: g.length })),
        { concurrency: opts.concurrency ?? 4, coalesceGap: opts.coalesceGap ?? (isRemote(source.uri) ? 64 * 1024 : 0), signal: opts.signal },
        (range, data) => {
          const g = byOffset.get(range.offset)!;
          for (const run of g.runs) run.dst.set(data.subarray(run.fileOffset - g.offset, run.fileOffset - g.offset + run.length), run.dstOffset);
        },
      );
      stats.readBytes += groups.reduce((s, g) => s + g.length, 0);
      stats.bytesTransferred += result.bytesTransferred;
      stats.requests += result.requests;
    }));
    for (let bi = 0; bi < batch.length; bi++) {
      await consume(batch[bi], buffers[bi]);
      done += batch[bi].byteLength;
      opts.onProgress?.(done, plan.sliceBytes);
    }
  }
  return stats;
}
