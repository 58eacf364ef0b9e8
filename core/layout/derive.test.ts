import { describe, expect, it } from 'vitest';
import { deriveInferenceStrategy, inferenceLayout, resolveTarget } from './derive.js';
import { layoutOf, strategyOf } from './test-builders.js';

describe('the inference target', () => {
  const twoStages = strategyOf([{ a: layoutOf([4], [0]) }, { b: layoutOf([4], [0]) }], 'train.json');
  it('fills in what was not given', () => {
    expect(resolveTarget(twoStages, { tp: 2 })).toEqual({ world: 4, stages: 2, tp: 2 });
    expect(resolveTarget(twoStages, { world: 6 })).toEqual({ world: 6, stages: 2, tp: 3 });
    expect(resolveTarget(twoStages, { world: 3, stages: 1 })).toEqual({ world: 3, stages: 1, tp: 3 });
  });
  it('refuses a stage count training did not have, and inconsistent numbers', () => {
    expect(() => resolveTarget(twoStages, { stages: 3, tp: 1 })).toThrow('--stages 3 does not match the 2 pipeline stage(s) of train.json (pipeline inference keeps the training stages; use 2, or 1 to put every stage on each rank)');
    expect(() => resolveTarget(twoStages, { world: 8, stages: 2, tp: 2 })).toThrow('--world 8 must equal --stages 2 × --tp 2 = 4');
    expect(() => resolveTarget(twoStages, {})).toThrow('give the inference world');
    expect(() => resolveTarget(twoStages, { tp: 0 })).toThrow('--tp must be a positive integer, got 0');
  });
});

describe('deriving the inference layout of a parameter', () => {
  it('keeps the model-parallel split dim with T parts', () => {
    expect(inferenceLayout(layoutOf([2, 1, 4, 1], [1, 0]), 2, [96, 16])).toMatchObject({ devMatrix: [2], tensorMap: [0, -1], tensorShape: [96, 16] });
  });
  it('prefers the dim with more training parts, then falls back when T does not divide it', () => {
    const twoD = layoutOf([2, 4], [1, 0]); // dim 0 in 2 parts, dim 1 in 4
    expect(inferenceLayout(twoD, 4, [8, 8]).tensorMap).toEqual([-1, 0]);
    expect(inferenceLayout(twoD, 3, [6, 8]).tensorMap).toEqual([0, -1]);
    expect(inferenceLayout(twoD, 5, [6, 8]).tensorMap).toEqual([-1, -1]);
  });
  it('replicates what training only sharded for the optimizer, and everything at T = 1', () => {
    expect(inferenceLayout(layoutOf([8], [-1, -1], { optShardStep: 1, optShardSize: 8 }), 4, [16, 2]).tensorMap).toEqual([-1, -1]);
    expect(inferenceLayout(layoutOf([8], [0]), 1, [16])).toMatchObject({ devMatrix: [1], tensorMap: [-1] });
  });
  it('puts every parameter in stage 0 when serving all stages on each rank; tied ones once', () => {
    const train = strategyOf([{ emb: layoutOf([2], [0, -1]), a: layoutOf([2], [-1]) }, { emb: layoutOf([2], [-1, 0]), b: layoutOf([2], [0]) }]);
    const one = deriveInferenceStrategy(train, { world: 2, stages: 1, tp: 2 }, new Map([['emb', [4, 4]], ['a', [2]], ['b', [2]]]));
    expect([...one.params.values()].map((p) => [p.name, p.stages])).toEqual([['emb', [0]], ['a', [0]], ['b', [0]]]);
    const two = deriveInferenceStrategy(train, { world: 4, stages: 2, tp: 2 });
    expect(two.params.get('emb')!.stages).toEqual([0, 1]);
    expect(two.params.get('emb')!.layoutByStage.get(1)!.tensorMap).toEqual([-1, 0]);
    expect(two.stageDevices).toBe(2);
  });
});
