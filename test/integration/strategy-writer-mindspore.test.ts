import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseStrategyFiles } from '../../core/strategy/reader.js';
import type { Strategy } from '../../core/strategy/types.js';
import { strategyToJson, strategyToProtobuf } from '../../core/strategy/writer.js';
import { ensurePythonVenv, runPython } from '../harness/python.js';

// Strategy files from our writers, read back by real MindSpore: its own reader
// (_build_searched_strategy + _convert_to_list, what load_distributed_checkpoint and the transform
// tools use) and merge_pipeline_strategys over our per-stage files, whose output our reader parses.
const CASES = 'test/fixtures/mindspore/cases';
const READ_PY = `
import json, sys
from mindspore.parallel._parallel_serialization import _build_searched_strategy, _convert_to_list
out = {}
for f in sys.argv[1:]:
    m = _convert_to_list(_build_searched_strategy(f))
    out[f] = {k: {"dev": [int(x) for x in v[0]], "map": v[1], "split": v[2], "field": v[3], "step": v[4], "size": v[5], "stages": sorted(v[6])} for k, v in m.items()}
print(json.dumps(out))
`;
const MERGE_PY = `
import sys
from mindspore.parallel.checkpoint_transform import merge_pipeline_strategys
merge_pipeline_strategys(sys.argv[1], sys.argv[2])
`;

let dir: string;
beforeAll(async () => {
  await ensurePythonVenv();
  dir = await mkdtemp(join(tmpdir(), 'strategy-ms-'));
  await writeFile(join(dir, 'read.py'), READ_PY);
  await writeFile(join(dir, 'merge.py'), MERGE_PY);
}, 30 * 60_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function fixtureStrategy(rel: string): Promise<Strategy> {
  const path = join(CASES, rel);
  const names = rel.endsWith('/') ? (await readdir(path)).sort().map((n) => join(path, n)) : [path];
  return parseStrategyFiles(await Promise.all(names.map(async (name) => ({ name, bytes: await readFile(name) }))), path);
}

/** What MindSpore's _convert_to_list should say for our strategy, all stages in one map. */
function expectedList(s: Strategy, merged: boolean): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const p of s.params.values()) {
    // Without a rank, MindSpore keeps the lowest stage's layout of a tied parameter.
    const l = p.layoutByStage.get(p.stages[0])!;
    // MindSpore lists every dim of a nested map as a list ([[2, 1], [0]]); we keep single axes as numbers.
    const map = l.tensorMap.some(Array.isArray) ? l.tensorMap.map((d) => (Array.isArray(d) ? d : [d])) : l.tensorMap;
    out[p.name] = { dev: l.devMatrix, map, split: l.paramSplitShape, field: l.field, step: l.optShardStep, size: l.optShardSize, stages: merged ? p.stages : [0] };
  }
  return out;
}

async function mindsporeRead(files: string[]): Promise<Record<string, unknown>> {
  const { stdout } = await runPython(join(dir, 'read.py'), files, { timeoutMs: 180_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

describe('strategy files from strategyToJson / strategyToProtobuf read in real MindSpore', () => {
  const singleStage = [
    { name: 'tutorial MatMul', rel: 'tutorial-matmul/strategy.ckpt', json: true },
    { name: 'optimizer sharding', rel: 'opt-shard/strategy.ckpt', json: true },
    { name: 'JSON source with tensor_shape', rel: 'json-strategy/strategy.json', json: true },
    { name: 'uneven split', rel: 'uneven-split/strategy.ckpt', json: true },
    // MindSpore's JSON reader takes only flat maps, so the nested case is checked as protobuf only.
    { name: 'nested tensor map', rel: 'nested-map/strategy.ckpt', json: false },
  ];
  // One MindSpore process reads every file (importing MindSpore takes seconds).
  let read: Promise<Record<string, unknown>> | undefined;
  const written = new Map<string, { strategy: Strategy; files: string[] }>();
  async function readAll() {
    if (!read) {
      read = (async () => {
        for (const c of singleStage) {
          const s = await fixtureStrategy(c.rel);
          const base = join(dir, c.rel.replace(/\W/g, '_'));
          await writeFile(`${base}.ckpt`, strategyToProtobuf(s));
          if (c.json) await writeFile(`${base}.json`, strategyToJson(s));
          written.set(c.rel, { strategy: s, files: c.json ? [`${base}.ckpt`, `${base}.json`] : [`${base}.ckpt`] });
        }
        return mindsporeRead([...written.values()].flatMap((w) => w.files));
      })();
    }
    return read;
  }

  it.each(singleStage)('single stage: $name', async ({ rel }) => {
    const got = await readAll();
    const { strategy, files } = written.get(rel)!;
    for (const f of files) expect(got[f], f).toEqual(expectedList(strategy, false));
  }, 300_000);

  it.each([
    { name: 'protobuf', ext: '.ckpt', write: (s: Strategy, stage?: number) => strategyToProtobuf(s, { stage }) },
    { name: 'JSON', ext: '.json', write: (s: Strategy, stage?: number) => Buffer.from(strategyToJson(s, { stage })) },
  ])('two pipeline stages ($name): our merged file reads in MindSpore; MindSpore merges our per-stage files into what we wrote', async ({ ext, write }) => {
    const s = await fixtureStrategy('pipeline-2stage/strategy/');
    const merged = join(dir, `ours-merged${ext}`);
    await writeFile(merged, write(s));
    expect((await mindsporeRead([merged]))[merged]).toEqual(expectedList(s, true));

    const stageDir = join(dir, `stages${ext.replace('.', '-')}`);
    await mkdir(stageDir);
    for (const stage of [0, 1]) await writeFile(join(stageDir, `src_strategy_${stage}${ext}`), write(s, stage));
    const theirs = join(dir, `ms-merged${ext}`);
    await runPython(join(dir, 'merge.py'), [stageDir, theirs], { timeoutMs: 180_000 });
    expect(parseStrategyFiles([{ name: theirs, bytes: await readFile(theirs) }], theirs)).toEqual({ ...s, uri: theirs });
  }, 300_000);
});
