import { describe, expect, it } from 'vitest';
import type { ParamLayout } from '../strategy/types.js';
import { layoutOf } from './test-builders.js';
import { distinctPieces, fullShapeFromSlice, intersectBoxes, optShard, rankBox, rankCoordinate, tensorStrategy } from './box.js';

const boxesOf = (layout: ParamLayout, full: number[]) =>
  Array.from({ length: layout.devMatrix.reduce((a, b) => a * b, 1) }, (_, r) => rankBox(layout, full, r));

describe('rank coordinates', () => {
  it('decompose a rank row-major, last axis fastest', () => {
    expect(rankCoordinate([2, 1, 4, 1], 6)).toEqual([1, 0, 2, 0]);
    expect(rankCoordinate([2, 2, 2], 5)).toEqual([1, 0, 1]);
  });
});

describe('the box each rank holds (reference worked examples)', () => {
  it('A: tutorial MatMul, D=[2,1,4,1] M=[1,0], ranks 4-7 replicate ranks 0-3', () => {
    const boxes = boxesOf(layoutOf([2, 1, 4, 1], [1, 0]), [96, 16]);
    expect(boxes.map((b) => b.offsets)).toEqual([[0, 0], [24, 0], [48, 0], [72, 0], [0, 0], [24, 0], [48, 0], [72, 0]]);
    expect(boxes.every((b) => b.sizes[0] === 24 && b.sizes[1] === 16)).toBe(true);
  });

  it('B: 2-D split D=[2,2] M=[1,0] gives four quadrants', () => {
    expect(boxesOf(layoutOf([2, 2], [1, 0]), [4, 4])).toEqual([
      { offsets: [0, 0], sizes: [2, 2] },
      { offsets: [0, 2], sizes: [2, 2] },
      { offsets: [2, 0], sizes: [2, 2] },
      { offsets: [2, 2], sizes: [2, 2] },
    ]);
  });

  it('C: replicated middle axis D=[2,2,2] M=[2,0]', () => {
    const boxes = boxesOf(layoutOf([2, 2, 2], [2, 0]), [4, 6]);
    expect(boxes.map((b) => b.offsets[0])).toEqual([0, 0, 0, 0, 2, 2, 2, 2]);
    expect(boxes.map((b) => b.offsets[1])).toEqual([0, 3, 0, 3, 0, 3, 0, 3]);
    expect(distinctPieces(layoutOf([2, 2, 2], [2, 0]), [4, 6]).map((p) => p.holders)).toEqual([[0, 2], [1, 3], [4, 6], [5, 7]]);
  });

  it('D: optimizer sharding D=[4,2] M=[0,-1] step 2 size 4 saves 2-row pieces', () => {
    const layout = layoutOf([4, 2], [0, -1], { optShardStep: 2, optShardSize: 4 });
    const boxes = boxesOf(layout, [16, 3]);
    expect(boxes.map((b) => [b.offsets[0], b.offsets[0] + b.sizes[0]])).toEqual([
      [0, 2], [8, 10], [2, 4], [10, 12], [4, 6], [12, 14], [6, 8], [14, 16],
    ]);
    expect(fullShapeFromSlice(layout, [2, 3], 5)).toEqual([16, 3]);
  });
});

describe('optimizer sharding', () => {
  it('size -1 uses the whole redundancy group', () => {
    const layout = layoutOf([4, 2], [0, -1], { optShardStep: 2, optShardSize: -1 });
    expect(optShard(layout).count).toBe(4);
    expect(rankBox(layout, [16, 3], 7)).toEqual({ offsets: [14, 0], sizes: [2, 3] });
  });

  it('a smaller size takes the inner factor of the replicated axis', () => {
    // D=[4,2]: opt over 2 of the 4 replicas; coordinate c0 % 2 picks the piece.
    const layout = layoutOf([4, 2], [0, -1], { optShardStep: 2, optShardSize: 2 });
    expect(boxesOf(layout, [16, 3]).map((b) => b.offsets[0])).toEqual([0, 8, 4, 12, 0, 8, 4, 12]);
  });

  it('general case: replicated axes are taken from the right, outermost most significant', () => {
    // D=[2,2,2] M=[-1,1]: dim 1 split by the middle axis; axes 0 and 2 replicate; k=4.
    const layout = layoutOf([2, 2, 2], [-1, 1], { optShardStep: 1, optShardSize: 4 });
    const boxes = boxesOf(layout, [8, 4]);
    // rank = c0*4 + c1*2 + c2; opt index = c0*2 + c2; dim 1 part = c1.
    expect(boxes.map((b) => [b.offsets[0], b.offsets[1]])).toEqual([
      [0, 0], [2, 0], [0, 2], [2, 2], [4, 0], [6, 0], [4, 2], [6, 2],
    ]);
    expect(boxes.every((b) => b.sizes[0] === 2 && b.sizes[1] === 2)).toBe(true);
  });

  it('a fully replicated tensor is opt-sharded over every axis', () => {
    const layout = layoutOf([2, 4], [-1], { optShardStep: 1, optShardSize: 8 });
    expect(boxesOf(layout, [16]).map((b) => b.offsets[0])).toEqual([0, 2, 4, 6, 8, 10, 12, 14]);
  });

  it('a wrong step in the common case is MindSpore\'s error', () => {
    const layout = layoutOf([4, 2], [0, -1], { optShardStep: 4, optShardSize: 4 });
    expect(() => rankBox(layout, [16, 3], 0, { param: 'w' })).toThrow("parameter 'w': opt_weight_shard_step 4 is not equal to the model parallel sharding size 2");
  });

  it('no replicated axis cannot carry opt sharding', () => {
    const layout = layoutOf([2, 2], [1, 0], { optShardStep: 4, optShardSize: 2 });
    expect(() => rankBox(layout, [4, 4], 0, { param: 'w' })).toThrow(/leave no replicated axis/);
  });
});

describe('nested tensor maps', () => {
  it('a dim split by two axes counts the first listed axis as outermost', () => {
    // D=[2,2,2], dim 0 split by axes (2,1) = devMatrix[0] outer, devMatrix[1] inner.
    const layout = layoutOf([2, 2, 2], [[2, 1], 0]);
    expect(tensorStrategy(layout)).toEqual([4, 2]);
    const boxes = boxesOf(layout, [8, 8]);
    // rank = c0*4 + c1*2 + c2 -> row part = c0*2 + c1, col part = c2
    expect(boxes.map((b) => [b.offsets[0], b.offsets[1]])).toEqual([
      [0, 0], [0, 4], [2, 0], [2, 4], [4, 0], [4, 4], [6, 0], [6, 4],
    ]);
  });
});

describe('uneven (manual) splits', () => {
  it('param_split_shape and indices_offset place each slice on dim 0', () => {
    const layout = layoutOf([3], [0, -1], { paramSplitShape: [5, 5, 6], indicesOffset: [0, 5, 10] });
    expect(boxesOf(layout, [16, 2])).toEqual([
      { offsets: [0, 0], sizes: [5, 2] },
      { offsets: [5, 0], sizes: [5, 2] },
      { offsets: [10, 0], sizes: [6, 2] },
    ]);
    expect(fullShapeFromSlice(layout, [6, 2], 2)).toEqual([16, 2]);
    expect(() => fullShapeFromSlice(layout, [5, 2], 2, { param: 'emb', file: 'rank_2/x.ckpt' })).toThrow("rank_2/x.ckpt: parameter 'emb': slice 2 has 5 rows but param_split_shape says 6");
  });
});

describe('full shape and errors', () => {
  it('derives the full shape from a slice', () => {
    expect(fullShapeFromSlice(layoutOf([2, 1, 4, 1], [1, 0]), [24, 16], 3)).toEqual([96, 16]);
    expect(fullShapeFromSlice(layoutOf([8], []), [], 0)).toEqual([]);
  });

  it('names the parameter when the map does not fit the tensor', () => {
    expect(() => rankBox(layoutOf([4], [0, -1]), [8], 0, { param: 'b', file: 's.json' })).toThrow("s.json: parameter 'b': tensor_map [0,-1] has 2 dims but the tensor has 1");
    expect(() => rankBox(layoutOf([4], [3]), [8], 0, { param: 'b' })).toThrow("parameter 'b': tensor_map value 3 is outside dev_matrix [4] (expected -1 or 0..0)");
    expect(() => rankBox(layoutOf([4], [0]), [6], 0, { param: 'b' })).toThrow("parameter 'b': dim 0 of size 6 cannot be split into 4 equal parts");
    expect(() => rankBox(layoutOf([4], [0]), [8], 4, { param: 'b' })).toThrow("parameter 'b': rank 4 is outside the stage's 4 devices (dev_matrix [4])");
  });

  it('intersects boxes', () => {
    expect(intersectBoxes({ offsets: [0, 0], sizes: [4, 4] }, { offsets: [2, 3], sizes: [4, 4] })).toEqual({ offsets: [2, 3], sizes: [2, 1] });
    expect(intersectBoxes({ offsets: [0], sizes: [4] }, { offsets: [4], sizes: [4] })).toBeUndefined();
    expect(intersectBoxes({ offsets: [], sizes: [] }, { offsets: [], sizes: [] })).toEqual({ offsets: [], sizes: [] });
  });
});
