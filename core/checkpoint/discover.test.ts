import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { layoutOf, strategyOf } from '../layout/test-builders.js';
import { openStorage } from '../storage/storage.js';
import { checkRanksAgainstStrategy, discoverCheckpoint, missingRanks } from './discover.js';

function tree(files: string[]): string {
  const root = mkdtempSync(join(tmpdir(), 'discover-'));
  for (const f of files) {
    mkdirSync(join(root, f, '..'), { recursive: true });
    writeFileSync(join(root, f), 'x');
  }
  return root;
}

describe('discovering rank files', () => {
  it('takes the newest file by name in each rank directory, in natural order', async () => {
    const root = tree(['rank_0/net-9_2.ckpt', 'rank_0/net-10_2.ckpt', 'rank_0/net-graph.meta', 'rank_1/net-1_1.ckpt', 'rank_10/a.ckpt', 'other/x.ckpt']);
    const found = await discoverCheckpoint(await openStorage(root));
    expect([...found]).toEqual([[0, 'rank_0/net-10_2.ckpt'], [1, 'rank_1/net-1_1.ckpt'], [10, 'rank_10/a.ckpt']]);
  });

  it('reports ranks the strategy expects but the checkpoint lacks', async () => {
    const root = tree(['rank_0/a.safetensors', 'rank_2/a.safetensors']);
    const found = await discoverCheckpoint(await openStorage(root));
    expect(missingRanks(found, strategyOf([{ w: layoutOf([4], [0]) }]))).toEqual([1, 3]);
    expect(() => checkRanksAgainstStrategy(found, strategyOf([{ w: layoutOf([2], [0]) }], 's.json'), root)).toThrow(`${root}: has rank_2/ but the strategy s.json describes 2 ranks (1 stage(s) × 2 devices); no strategy file covers rank_2..rank_2`);
  });

  it('refuses a rank directory mixing formats, and a root without rank directories', async () => {
    const mixed = tree(['rank_0/a.ckpt', 'rank_0/a.safetensors']);
    await expect(discoverCheckpoint(await openStorage(mixed))).rejects.toThrow(`${join(mixed, 'rank_0')}: holds both .ckpt and .safetensors files (keep one format per rank directory)`);
    const empty = tree(['notes.txt']);
    await expect(discoverCheckpoint(await openStorage(empty))).rejects.toThrow(`${empty}: no rank_<N>/ directories holding .ckpt or .safetensors files`);
  });
});
