import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { describe, expect, it } from 'vitest';
import { ShardserveError } from '../errors.js';
import { parseStrategyFile, parseStrategyFiles, splitMergedKey } from './reader.js';
import type { ParamLayout } from './types.js';
import { strategyToJson, strategyToProtobuf } from './writer.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const root = protobuf.loadSync(fileURLToPath(new URL('./node_strategy.proto', import.meta.url)));
const StrategyMap = root.lookupType('mindspore.straspb.ParallelStrategyMap');

/** A layout with defaults, overridden by what a case cares about. */
const layout = (over: Partial<ParamLayout> = {}): ParamLayout => ({
  devMatrix: [2, 4], tensorMap: [0, -1], paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0, ...over,
});

/** Encode a ParallelStrategyMap with protobufjs from our .proto (an independent encoder). */
function pb(opts: { stage?: number; layouts: Record<string, Partial<{ dev: number[]; maps: number[][]; field: number; step: number; size: number; omit67: boolean }>> }): Uint8Array {
  const msg = StrategyMap.fromObject({
    currentStage: 1,
    parallelStrategyItem: opts.stage === undefined ? [] : [{ nodeName: 'Default/MatMul-op0', parallelStrategys: { stage: opts.stage, parallelStrategy: [{ dim: [1, 4] }] } }],
    parallelLayoutItem: Object.entries(opts.layouts).map(([paramName, l]) => ({
      paramName,
      parallelLayouts: {
        devMatrix: [{ dim: l.dev ?? [2, 4] }], tensorMap: (l.maps ?? [[0, -1]]).map((dim) => ({ dim })),
        paramSplitShape: [{ dim: [] }], indicesOffset: [{ dim: [] }], field: l.field ?? 0,
        ...(l.omit67 ? {} : { optWeightShardStep: l.step ?? 0, optWeightShardSize: l.size ?? 0 }),
      },
    })),
  });
  return StrategyMap.encode(msg).finish();
}

describe('protobuf strategy', () => {
  // Reference §2.1 example.
  const REF = hex('0801 1224 0a12 44656661756c742f4d61744d756c2d6f7030 120e 0800 1204 0801 0804 1204 0804 0801 1a30 0a0d 6d61746d756c5f776569676874 121f 0a04 0802 0804 120d 0800 08ffffffffffffffffff01 1a00 2200 2800 3000 3800');

  it('decodes the reference example (int32 -1 as a 10-byte varint)', () => {
    const s = parseStrategyFiles([{ name: 'strategy.ckpt', bytes: REF }], 'strategy.ckpt');
    expect(s.stageCount).toBe(1);
    expect(s.stageDevices).toBe(8);
    expect(s.params.get('matmul_weight')).toEqual({ name: 'matmul_weight', stages: [0], layoutByStage: new Map([[0, layout()]]) });
  });

  it('the writer reproduces the reference layout bytes and protobufjs reads them', () => {
    const s = parseStrategyFiles([{ name: 'strategy.ckpt', bytes: REF }], 'strategy.ckpt');
    const out = strategyToProtobuf(s);
    expect(Buffer.from(out).toString('hex')).toBe('0801' + REF.subarray(40).toString('hex'));
    expect(StrategyMap.toObject(StrategyMap.decode(out), { defaults: false })).toMatchObject({
      currentStage: 1, parallelLayoutItem: [{ paramName: 'matmul_weight', parallelLayouts: { devMatrix: [{ dim: [2, 4] }], tensorMap: [{ dim: [0, -1] }] } }],
    });
  });

  it('reads fields 6/7 as 0 when an old file lacks them, and opt sharding when present', () => {
    const s = parseStrategyFiles([{ name: 's.ckpt', bytes: pb({ layouts: { old: { omit67: true }, opt: { dev: [4, 2], maps: [[0, -1]], step: 2, size: 4 } } }) }], 's.ckpt');
    expect(s.params.get('old')!.layoutByStage.get(0)).toEqual(layout());
    expect(s.params.get('opt')!.layoutByStage.get(0)).toEqual(layout({ devMatrix: [4, 2], optShardStep: 2, optShardSize: 4 }));
  });

  it('takes the stage from the first parallel_strategy_item', () => {
    expect(parseStrategyFile('s1.ckpt', pb({ stage: 1, layouts: { w: {} } })).stage).toBe(1);
    expect(parseStrategyFile('s0.ckpt', pb({ layouts: { w: {} } })).stage).toBeUndefined();
  });

  it('decodes nested tensor maps: one entry per dim, empty entries dropped', () => {
    const s = parseStrategyFiles([{ name: 's.ckpt', bytes: pb({ layouts: {
      w: { dev: [2, 2, 2], maps: [[2, 1], [0]] }, b: { dev: [2, 2, 2], maps: [[2, 1], []] },
    } }) }], 's.ckpt');
    expect(s.params.get('w')!.layoutByStage.get(0)!.tensorMap).toEqual([[2, 1], 0]);
    expect(s.params.get('b')!.layoutByStage.get(0)!.tensorMap).toEqual([[2, 1]]);
  });

  it('accepts packed repeated fields', () => {
    const packed = hex('1a1c 0a01 77 1217 0a04 0a02 0204 120d 0a0b 00ffffffffffffffffff01 2800');
    expect(parseStrategyFiles([{ name: 'p.ckpt', bytes: packed }], 'p.ckpt').params.get('w')!.layoutByStage.get(0)).toEqual(layout({ devMatrix: [2, 4] }));
  });
});

describe('several files, stages and merged keys', () => {
  const stage0 = pb({ stage: 0, layouts: { emb: { dev: [4], maps: [[0, -1]] }, l0: { dev: [4], maps: [[-1, 0]] } } });
  const stage1 = pb({ stage: 1, layouts: { emb: { dev: [2, 2], maps: [[1, -1]] }, l1: { dev: [4], maps: [[-1, 0]] } } });

  it('merges per-rank files of two stages, dedupes identical ones, keeps tied params in both stages', () => {
    const s = parseStrategyFiles([
      { name: 'r0.ckpt', bytes: stage0 }, { name: 'r1.ckpt', bytes: stage0 }, { name: 'r4.ckpt', bytes: stage1 }, { name: 'r5.ckpt', bytes: stage1 },
    ], 'dir');
    expect(s.stageCount).toBe(2);
    expect(s.stageDevices).toBe(4);
    expect([...s.params.keys()]).toEqual(['emb', 'l0', 'l1']);
    expect(s.params.get('emb')!.stages).toEqual([0, 1]);
    expect(s.params.get('emb')!.layoutByStage.get(1)!.devMatrix).toEqual([2, 2]);
  });

  it('reads a merged file with "<stage>-<param>" keys, and a name that itself contains "-"', () => {
    const merged = JSON.stringify({ current_stage: 1, parallel_layout_item: {
      '0-emb': { dev_matrix: [4], tensor_map: [0, -1], tensor_shape: [8, 2] }, '1-emb': { dev_matrix: [4], tensor_map: [-1, -1] },
      '1-model.ffn-out': { dev_matrix: [2, 2], tensor_map: [1, 0] },
    } });
    const s = parseStrategyFiles([{ name: 'merged.json', bytes: Buffer.from(merged) }], 'merged.json');
    expect(s.stageCount).toBe(2);
    expect(s.params.get('emb')!.layoutByStage.get(0)).toEqual(layout({ devMatrix: [4], tensorShape: [8, 2] }));
    expect(s.params.get('model.ffn-out')!.stages).toEqual([1]);
  });

  it('splits merged keys only on an integer prefix', () => {
    expect(splitMergedKey('3-a-b')).toEqual([3, 'a-b']);
    expect(splitMergedKey('x-a')).toBeUndefined();
    expect(splitMergedKey('12')).toBeUndefined();
  });

  it('round-trips through the writers (JSON merged, JSON per stage, protobuf per stage)', () => {
    const s = parseStrategyFiles([{ name: 'a.ckpt', bytes: stage0 }, { name: 'b.ckpt', bytes: stage1 }], 'dir');
    const again = (files: { name: string; bytes: Uint8Array }[]) => parseStrategyFiles(files, 'dir');
    expect(again([{ name: 'm.json', bytes: Buffer.from(strategyToJson(s)) }])).toEqual(s);
    expect(again([0, 1].map((st) => ({ name: `s${st}.json`, bytes: Buffer.from(strategyToJson(s, { stage: st })) })))).toEqual(s);
    expect(again([0, 1].map((st) => ({ name: `s${st}.ckpt`, bytes: strategyToProtobuf(s, { stage: st }) })))).toEqual(s);
    expect(again([{ name: 'm.ckpt', bytes: strategyToProtobuf(s) }])).toEqual(s);
  });

  it('round-trips nested maps and manual splits', () => {
    const json = JSON.stringify({ parallel_layout_item: {
      w: { dev_matrix: [2, 2, 2], tensor_map: [[2, 1], 0] }, v: { dev_matrix: [2, 2, 2], tensor_map: [[2, 1], []] },
      e: { dev_matrix: [8], tensor_map: [0, -1], param_split_shape: [3, 5], indices_offset: [0, 3], field: 0 },
    } });
    const s = parseStrategyFiles([{ name: 'n.json', bytes: Buffer.from(json) }], 'n.json');
    expect(s.params.get('v')!.layoutByStage.get(0)!.tensorMap).toEqual([[2, 1]]);
    expect(parseStrategyFiles([{ name: 'n.ckpt', bytes: strategyToProtobuf(s) }], 'n.json')).toEqual(s);
    expect(parseStrategyFiles([{ name: 'n.json', bytes: Buffer.from(strategyToJson(s)) }], 'n.json')).toEqual(s);
  });
});

describe('strategy bad input', () => {
  const j = (o: unknown) => Buffer.from(JSON.stringify(o));
  const one = (dev: number[], tm: unknown, extra = {}) => j({ parallel_layout_item: { w: { dev_matrix: dev, tensor_map: tm, ...extra } } });
  const cases: Array<{ name: string; files: { name: string; bytes: Uint8Array }[]; message: string }> = [
    { name: 'empty file', files: [{ name: 's.ckpt', bytes: new Uint8Array(0) }], message: 's.ckpt: strategy file is empty' },
    { name: 'truncated protobuf', files: [{ name: 's.ckpt', bytes: pb({ layouts: { w: {} } }).subarray(0, 20) }], message: 's.ckpt: corrupt protobuf strategy at offset 3: length-delimited field runs past the end of its message' },
    { name: 'not JSON', files: [{ name: 's.json', bytes: Buffer.from('{x') }], message: 's.json: not valid JSON (' },
    { name: 'no layouts in JSON', files: [{ name: 's.json', bytes: j({ current_stage: 1 }) }], message: 's.json: parallel_layout_item is missing or not an object' },
    { name: 'no layouts at all', files: [{ name: 's.ckpt', bytes: hex('0801') }], message: 'dir: strategy has no parameter layouts' },
    { name: 'axis out of range', files: [{ name: 's.json', bytes: one([2, 4], [2, -1]) }], message: "s.json: parameter 'w': tensor_map [2,-1] refers to device axis 2, but dev_matrix [2,4] has 2 axes" },
    { name: 'axis used twice', files: [{ name: 's.json', bytes: one([2, 4], [0, 0]) }], message: "s.json: parameter 'w': tensor_map [0,0] uses device axis 0 twice" },
    { name: 'zero in dev_matrix', files: [{ name: 's.json', bytes: one([0, 4], [0]) }], message: "s.json: parameter 'w': dev_matrix [0,4] must be a non-empty list of positive integers" },
    { name: 'split lists differ', files: [{ name: 's.json', bytes: one([4], [0], { param_split_shape: [1, 2], indices_offset: [0] }) }],
      message: "s.json: parameter 'w': param_split_shape has 2 entries but indices_offset has 1" },
    { name: 'tensor_map not a list', files: [{ name: 's.json', bytes: one([4], 'x') }], message: "s.json: parameter 'w': \"tensor_map\" is not a list of integers (or of lists of integers)" },
    { name: 'conflicting layouts in one stage', files: [{ name: 'a.json', bytes: one([4], [0, -1]) }, { name: 'b.json', bytes: one([4], [-1, 0]) }],
      message: "b.json: parameter 'w' in stage 0 has layout dev_matrix [4] tensor_map [-1,0], but a.json gives dev_matrix [4] tensor_map [0,-1]" },
    { name: 'missing stage', files: [{ name: 'm.json', bytes: j({ parallel_layout_item: { '0-a': { dev_matrix: [2], tensor_map: [0] }, '2-b': { dev_matrix: [2], tensor_map: [0] } } }) }],
      message: 'dir: strategy does not contain all pipeline stages: found stages [0,2], expected 0..2' },
    { name: 'device count differs within a stage', files: [{ name: 's.json', bytes: j({ parallel_layout_item: { a: { dev_matrix: [2, 2], tensor_map: [0] }, b: { dev_matrix: [8], tensor_map: [0] } } }) }],
      message: "s.json: parameter 'b' in stage 0 arranges 8 devices (dev_matrix [8]), but 'a' arranges 4" },
    { name: 'device count differs across stages', files: [{ name: 'm.json', bytes: j({ parallel_layout_item: { '0-a': { dev_matrix: [2], tensor_map: [0] }, '1-b': { dev_matrix: [4], tensor_map: [0] } } }) }],
      message: 'dir: pipeline stages arrange different device counts (stage 0: 2, stage 1: 4)' },
    { name: 'wrong wire type', files: [{ name: 's.ckpt', bytes: hex('0a01') }], message: 's.ckpt: corrupt protobuf strategy at offset 1: current_stage field 0 has wire type 2, expected 0' },
    { name: 'no files', files: [], message: 'dir: no strategy files' },
  ];
  it.each(cases)('$name', ({ files, message }) => {
    let err: unknown;
    try {
      parseStrategyFiles(files, 'dir');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ShardserveError);
    // JSON.parse wording varies across Node versions; everything else is compared exactly.
    if (message.endsWith('(')) expect((err as Error).message.startsWith(message)).toBe(true);
    else expect((err as Error).message).toBe(message);
  });
});
