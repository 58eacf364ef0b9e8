import { ShardserveError } from '../errors.js';
import type { Storage } from '../storage/storage.js';
import type { Strategy } from '../strategy/types.js';

const RANK_FILE = /^(?:.*\/)?rank_(\d+)\/([^/]+\.(ckpt|safetensors))$/;

/** Natural order: `net-10_2.ckpt` is newer than `net-9_2.ckpt`. */
const byName = (a: string, b: string) => a.localeCompare(b, 'en', { numeric: true });

/**
 * The checkpoint file of every training rank under a root laid out as MindSpore saves it:
 * `rank_<N>/<name>.ckpt|.safetensors`, the newest by name when a directory holds several.
 * A rank directory mixing .ckpt and .safetensors files is an error (MindSpore refuses it too).
 */
export async function discoverCheckpoint(storage: Storage): Promise<Map<number, string>> {
  const byRank = new Map<number, { dir: string; keys: string[] }>();
  for (const obj of await storage.list()) {
    const m = RANK_FILE.exec(obj.key);
    if (!m) continue;
    const prefix = obj.key.slice(0, obj.key.length - m[2].length - 1);
    // Only the rank_<N>/ directories nearest the root count (ignore copies nested deeper).
    if (prefix.split('/').length > 1 && !/^rank_\d+$/.test(prefix)) continue;
    const rank = Number(m[1]);
    const entry = byRank.get(rank) ?? { dir: prefix, keys: [] };
    entry.keys.push(obj.key);
    byRank.set(rank, entry);
  }
  if (byRank.size === 0) {
    throw new ShardserveError('NoCheckpoint', `${storage.uri}: no rank_<N>/ directories holding .ckpt or .safetensors files`, { file: storage.uri });
  }
  const out = new Map<number, string>();
  for (const rank of [...byRank.keys()].sort((a, b) => a - b)) {
    const { keys } = byRank.get(rank)!;
    const kinds = new Set(keys.map((k) => k.slice(k.lastIndexOf('.'))));
    if (kinds.size > 1) {
      throw new ShardserveError('MixedFormats', `${storage.uriOf(`rank_${rank}`)}: holds both .ckpt and .safetensors files (keep one format per rank directory)`, { file: storage.uriOf(`rank_${rank}`) });
    }
    out.set(rank, keys.sort(byName)[keys.length - 1]);
  }
  return out;
}

/** Training ranks of the given stages that the strategy expects but the checkpoint lacks. */
export function missingRanks(found: Map<number, string>, strategy: Strategy, stages?: number[]): number[] {
  const missing: number[] = [];
  for (const stage of stages ?? Array.from({ length: strategy.stageCount }, (_, i) => i)) {
    for (let local = 0; local < strategy.stageDevices; local++) {
      const rank = stage * strategy.stageDevices + local;
      if (!found.has(rank)) missing.push(rank);
    }
  }
  return missing;
}

/** Errors when the checkpoint has ranks the strategy does not know (a different training world). */
export function checkRanksAgainstStrategy(found: Map<number, string>, strategy: Strategy, uri: string): void {
  const world = strategy.stageCount * strategy.stageDevices;
  const extra = [...found.keys()].filter((r) => r >= world);
  if (extra.length > 0) {
    const last = Math.max(...extra);
    throw new ShardserveError('RankMismatch', `${uri}: has rank_${extra[0]}/ but the strategy ${strategy.uri} describes ${world} ranks (${strategy.stageCount} stage(s) × ${strategy.stageDevices} devices); no strategy file covers rank_${world}..rank_${last}`, { file: uri });
  }
}
