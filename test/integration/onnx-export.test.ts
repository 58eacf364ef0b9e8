// `shardserve export` on the committed MindSpore example (examples/: 4 training ranks = 2 pipeline
// stages x 2-way tensor parallel): per-rank ONNX files, each holding its stage and its own resharded
// weights, run one after another give BITWISE the merged single-device model's output, which is also
// the answer onnxruntime (Python) gave on MindSpore's own export of the network (examples/sample.json).
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { main } from '../../cli/main.js';
import { parseOnnx, serializeOnnx } from '../../core/onnx/model.js';
import { type Feeds, runModel, runStagesInSequence, tensorBytes } from '../../core/onnx/ort-run.js';
import { mlpNetwork } from '../../core/onnx/sample-networks.js';
import { addTrainingStates, writeServeFixture } from './serve-fixture.js';

const examples = resolve(import.meta.dirname, '../../examples');
const tmp = mkdtempSync(join(tmpdir(), 'shardserve-export-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const sample = JSON.parse(readFileSync(join(examples, 'sample.json'), 'utf8'));
const outputName: string = sample.expected_outputs[0].name;
const feeds = (): Feeds => ({ [sample.inputs[0].name]: new ort.Tensor('float32', Float32Array.from(sample.inputs[0].data), sample.inputs[0].shape) });
const expected = () => Buffer.from(Float32Array.from(sample.expected_outputs[0].data).buffer);
const bytesOf = (f: Feeds) => Buffer.from(tensorBytes(f[outputName]));

/** Run the CLI in-process; returns the exit code and what it printed. */
async function shardserve(...argv: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [], err: string[] = [];
  const write = { out: process.stdout.write.bind(process.stdout), err: process.stderr.write.bind(process.stderr) };
  process.stdout.write = ((s: string) => (out.push(String(s)), true)) as typeof process.stdout.write;
  process.stderr.write = ((s: string) => (err.push(String(s)), true)) as typeof process.stderr.write;
  try {
    const code = await main(argv);
    return { code, stdout: out.join(''), stderr: err.join('') };
  } finally {
    process.stdout.write = write.out;
    process.stderr.write = write.err;
  }
}

const source = ['--model', join(examples, 'model/net.onnx'), '--checkpoint', join(examples, 'checkpoint'), '--strategy', join(examples, 'strategy')];

describe('shardserve export on the MindSpore example', () => {
  const merged = join(tmp, 'merged');
  const pipeline = join(tmp, 'pipeline');

  beforeAll(async () => {
    expect((await shardserve('export', ...source, '--world', '1', '--out', merged)).code).toBe(0);
    const r = await shardserve('export', ...source, '--world', '2', '--stages', '2', '--out', pipeline);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('writes one merged model for --world 1 and one model per rank otherwise', () => {
    expect(readdirSync(merged).sort()).toEqual(['export.json', 'model.onnx']);
    expect(readdirSync(pipeline).sort()).toEqual(['export.json', 'rank_0', 'rank_1']);
    expect(readdirSync(join(pipeline, 'rank_0'))).toEqual(['model.onnx']);
  });

  it('merged model answers exactly what onnxruntime answered on MindSpore\'s own export', async () => {
    expect(bytesOf(await runModel(join(merged, 'model.onnx'), feeds())).equals(expected())).toBe(true);
  });

  it('per-rank models run in sequence equal the merged model bitwise', async () => {
    const ranks = [0, 1].map((r) => join(pipeline, `rank_${r}`, 'model.onnx'));
    const want = bytesOf(await runModel(join(merged, 'model.onnx'), feeds()));
    expect(bytesOf(await runStagesInSequence(ranks, feeds())).equals(want)).toBe(true);
  });

  it('gives each rank only its stage, with its weights resharded from 2-way tensor parallel to whole tensors', () => {
    const full = new Map(parseOnnx(readFileSync(join(merged, 'model.onnx'))).graph!.initializer!.map((t) => [t.name!, t]));
    const rank1 = parseOnnx(readFileSync(join(pipeline, 'rank_1', 'model.onnx'))).graph!;
    const params = rank1.initializer!.map((t) => t.name!).filter((n) => !n.includes('/'));
    expect(params).toEqual(['blocks.1.norm.gamma', 'blocks.1.norm.beta', 'blocks.1.fc1.weight', 'blocks.1.fc1.bias', 'blocks.1.fc2.weight', 'blocks.1.fc2.bias', 'head.weight', 'head.bias']);
    const asJson = (t: object) => JSON.stringify(t, (k, v) => (k === 'rawData' ? Buffer.from(v).toString('hex') : v));
    for (const t of rank1.initializer!) expect(asJson(t), t.name).toBe(asJson(full.get(t.name!)!));
    expect(rank1.initializer!.find((t) => t.name === 'blocks.1.fc1.weight')!.dims).toEqual([256, 64]);
    // The skip from the embedding to the head crosses the stage boundary next to the block output.
    const manifest = JSON.parse(readFileSync(join(pipeline, 'export.json'), 'utf8'));
    expect(manifest.stages[0].outputs.map((t: { name: string }) => t.name)).toEqual(manifest.stages[1].inputs.map((t: { name: string }) => t.name));
    expect(manifest.stages[0].outputs).toHaveLength(2);
    expect(manifest.ranks).toEqual([{ rank: 0, stage: 0, file: 'rank_0/model.onnx' }, { rank: 1, stage: 1, file: 'rank_1/model.onnx' }]);
  });

  it('puts weights in external data past the threshold, still bitwise equal', async () => {
    const out = join(tmp, 'external');
    const r = await shardserve('export', ...source, '--stages', '2', '--external-data-threshold', '4096', '--out', out);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('rank 0 (stage 0): rank_0/model.onnx');
    expect(r.stdout).toContain('+ rank_0/model.onnx.data');
    expect(readdirSync(join(out, 'rank_1')).sort()).toEqual(['model.onnx', 'model.onnx.data']);
    const ranks = [0, 1].map((k) => join(out, `rank_${k}`, 'model.onnx'));
    expect(bytesOf(await runStagesInSequence(ranks, feeds())).equals(expected())).toBe(true);
  });

  it('cuts at --cut-tensors when given, still bitwise equal', async () => {
    const out = join(tmp, 'cut');
    // Tensor '5' is block 0's output in MindSpore's export (see export.json of the parameter cut).
    const r = await shardserve('export', ...source, '--stages', '2', '--cut-tensors', '5', '--out', out);
    expect(r.code).toBe(0);
    const ranks = [0, 1].map((k) => join(out, `rank_${k}`, 'model.onnx'));
    expect(bytesOf(await runStagesInSequence(ranks, feeds())).equals(expected())).toBe(true);
  });

  it('makes the same files from MindSpore\'s merged strategy file as from the per-rank strategy files', async () => {
    const out = join(tmp, 'from-merged-strategy');
    const flags = ['--model', join(examples, 'model/net.onnx'), '--checkpoint', join(examples, 'checkpoint'), '--strategy', join(examples, 'strategy_merged.ckpt')];
    expect((await shardserve('export', ...flags, '--stages', '2', '--out', out)).code).toBe(0);
    for (const file of ['rank_0/model.onnx', 'rank_1/model.onnx']) {
      expect(readFileSync(join(out, file)).equals(readFileSync(join(pipeline, file))), file).toBe(true);
    }
  });

  it('re-serializes MindSpore\'s ONNX file byte for byte', () => {
    const bytes = readFileSync(join(examples, 'model/net.onnx'));
    expect(Buffer.from(serializeOnnx(parseOnnx(bytes))).equals(bytes)).toBe(true);
  });
});

describe('shardserve export reads only weights', () => {
  it('not the optimizer states and counters a training checkpoint also holds (they are in no strategy)', async () => {
    const net = mlpNetwork();
    const fixture = writeServeFixture(join(tmp, 'training-states'), net, 2);
    const weightBytes = addTrainingStates(fixture, net);
    const r = await shardserve('export', '--model', fixture.model, '--checkpoint', fixture.checkpoint, '--strategy', fixture.strategy, '--world', '2', '--stages', '2', '--out', join(tmp, 'training-states-out'), '--json');
    expect([r.code, r.stderr]).toEqual([0, '']);
    expect(JSON.parse(r.stdout).files.map((f: { stage: number; readBytes: number }) => [f.stage, f.readBytes])).toEqual([[0, weightBytes[0]], [1, weightBytes[1]]]);
  });
});

describe('shardserve export rejects', () => {
  it.each([
    ['tensor parallelism', ['--tp', '2'], 1, 'shardserve export: tensor-parallel export (--tp 2) is not supported yet; only --tp 1 (each stage on one rank) is\n'],
    ['a stage count other than training', ['--stages', '3'], 1, `shardserve export: ${join(examples, 'strategy')}: the checkpoint was trained with 2 pipeline stage(s); a pipeline of 3 stages must use the same count (or --world 1 for one device)\n`],
    ['a world that is not stages x tp', ['--world', '3', '--stages', '2'], 2, 'shardserve export: --world 3 must equal --stages 2 × --tp 1\n'],
    ['a wrong cut tensor', ['--stages', '2', '--cut-tensors', 'nope'], 1, `shardserve export: ${join(examples, 'model/net.onnx')}: cut tensor 'nope' (boundary 0) is not a tensor of the graph; expected the output of a node\n`],
  ])('%s, writing nothing', async (_name, flags, code, stderr) => {
    const out = join(tmp, `bad-${flags.join('')}`);
    const r = await shardserve('export', ...source, ...flags, '--out', out);
    expect(r.stderr).toBe(stderr);
    expect(r.code).toBe(code);
    expect(existsSync(join(out, 'rank_0'))).toBe(false);
  });

  it('a missing flag as a usage error (exit 2)', async () => {
    const r = await shardserve('export', '--checkpoint', 'c', '--strategy', 's', '--out', join(tmp, 'x'));
    expect(r).toEqual({ code: 2, stdout: '', stderr: 'shardserve export: --model is required\n' });
  });

  it('a rename map that leaves an initializer without its weight, before writing any rank', async () => {
    const map = join(tmp, 'names.json');
    writeFileSync(map, JSON.stringify({ 'head.bias': 'classifier.bias' }));
    const out = join(tmp, 'bad-names');
    const r = await shardserve('export', ...source, '--stages', '2', '--parameter-names', map, '--out', out);
    expect(r.stderr).toBe(`shardserve export: ${join(examples, 'model/net.onnx')}: no weight for initializer 'head.bias' of stage 1: the rank's checkpoint slice has no parameter 'head.bias' and parameterNames maps none to it\n`);
    expect(r.code).toBe(1);
    expect(readdirSync(out)).toEqual([]);
  });
});
