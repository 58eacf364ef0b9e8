// The committed example (examples/) is exactly what real MindSpore makes: re-running
// examples/make_example.py in the test-bed venv (MindSpore exports the ONNX, saves the per-rank
// checkpoints, merges the per-rank strategies, and checks with transform_checkpoints that the slices
// merge back into the weights) reproduces every committed file byte for byte.
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import ort from 'onnxruntime-node';
import { parseOnnx, serializeOnnx } from '../../core/onnx/model.js';
import { runModel, tensorBytes } from '../../core/onnx/ort-run.js';
import { ensurePythonVenv, runPython } from '../harness/python.js';

const examples = resolve(import.meta.dirname, '../../examples');
const tmp = mkdtempSync(join(tmpdir(), 'shardserve-example-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

function filesUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? filesUnder(path) : [path];
  });
}

const GENERATED = ['model', 'checkpoint', 'strategy', 'strategy_merged.ckpt', 'sample.json', 'example.json'];

describe('examples/make_example.py with real MindSpore', () => {
  let report: { input: string; output: string; mindspore_vs_onnxruntime_max_abs_diff: number };

  beforeAll(async () => {
    await ensurePythonVenv();
    const { stdout } = await runPython(join(examples, 'make_example.py'), [tmp, '--keep-full'], { timeoutMs: 10 * 60_000 });
    report = JSON.parse(stdout.trim().split('\n').pop()!);
  }, 15 * 60_000);

  it('reproduces every committed example file byte for byte', () => {
    const committed = GENERATED.flatMap((g) => {
      const path = join(examples, g);
      return statSync(path).isDirectory() ? filesUnder(path) : [path];
    }).map((p) => relative(examples, p)).sort();
    const generated = GENERATED.flatMap((g) => {
      const path = join(tmp, g);
      return statSync(path).isDirectory() ? filesUnder(path) : [path];
    }).map((p) => relative(tmp, p)).sort();
    expect(generated).toEqual(committed);
    expect(committed).toContain('checkpoint/rank_3/net.ckpt');
    for (const file of committed) {
      expect(readFileSync(join(tmp, file)).equals(readFileSync(join(examples, file))), `${file} differs from what MindSpore makes now`).toBe(true);
    }
  });

  it('parses and re-serializes MindSpore\'s ONNX export (with weights) byte for byte, and onnxruntime-node computes the expected answer from it', async () => {
    const bytes = readFileSync(join(tmp, 'net_full.onnx'));
    const again = serializeOnnx(parseOnnx(bytes));
    expect(Buffer.from(again).equals(bytes)).toBe(true);
    const sample = JSON.parse(readFileSync(join(tmp, 'sample.json'), 'utf8'));
    const feeds = { x: new ort.Tensor('float32', Float32Array.from(sample.inputs[0].data), sample.inputs[0].shape) };
    const got = await runModel(again, feeds);
    expect(Buffer.from(tensorBytes(got[report.output])).equals(Buffer.from(Float32Array.from(sample.expected_outputs[0].data).buffer))).toBe(true);
  });

  it('MindSpore itself and onnxruntime on its ONNX export agree to float32 rounding', () => {
    expect(report.input).toBe('x');
    expect(report.mindspore_vs_onnxruntime_max_abs_diff).toBeLessThan(1e-5);
  });
});
