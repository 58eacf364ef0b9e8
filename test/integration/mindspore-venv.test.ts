// The Python test bed is real: the venv imports the pinned MindSpore, and check_load.py (the "loads in
// MindSpore" oracle other suites use) accepts real fixture files and rejects tampered ones with exact output.
import { copyFileSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REQUIREMENTS_FILE, ensurePythonVenv, runPython } from '../harness/python.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const fixtures = join(root, 'test', 'fixtures', 'mindspore');
const checkLoad = join(fixtures, 'check_load.py');
const cases = join(fixtures, 'cases');
const T = 180_000;

type RunError = Error & { stdout: string; stderr: string; exitCode: number | null };

async function runExpectingFailure(args: string[]): Promise<RunError> {
  try {
    await runPython(checkLoad, args);
  } catch (err) {
    return err as RunError;
  }
  throw new Error(`check_load.py ${args.join(' ')} exited 0 but a failure was expected`);
}

function pinned(pkg: string): string {
  const line = readFileSync(REQUIREMENTS_FILE, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${pkg}==`));
  if (!line) throw new Error(`${REQUIREMENTS_FILE}: no exact pin for ${pkg}`);
  return line.slice(pkg.length + 2).trim();
}

let work: string;
beforeAll(async () => {
  await ensurePythonVenv();
  work = mkdtempSync(join(tmpdir(), 'mindspore-venv-test-'));
}, 60 * 60_000);
afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('python venv', () => {
  it('imports the pinned MindSpore, numpy and onnx and runs a MindSpore op on CPU', async () => {
    const script = join(work, 'versions.py');
    writeFileSync(
      script,
      [
        'import json, numpy as np, onnx, mindspore as ms',
        'from mindspore import Tensor, ops',
        'y = ops.add(Tensor(np.array([1, 2], np.int32)), Tensor(np.array([3, 4], np.int32))).asnumpy().tolist()',
        'print(json.dumps({"mindspore": ms.__version__, "numpy": np.__version__, "onnx": onnx.__version__, "add": y, "device": ms.get_context("device_target")}))',
      ].join('\n'),
    );
    const { stdout } = await runPython(script, []);
    expect(JSON.parse(stdout.trim().split('\n').pop()!)).toEqual({
      mindspore: pinned('mindspore'),
      numpy: pinned('numpy'),
      onnx: pinned('onnx'),
      add: [4, 6],
      device: 'CPU',
    });
  }, T);

  it('runPython rejects a non-zero exit with the script stderr, and kills a script past its deadline', async () => {
    const bad = join(work, 'bad.py');
    writeFileSync(bad, 'import sys\nsys.stderr.write("boom: no such tensor\\n")\nsys.exit(3)\n');
    const err = (await runPython(bad, []).catch((e) => e)) as RunError;
    expect(err.exitCode).toBe(3);
    expect(err.message).toContain('exited with 3');
    expect(err.message).toContain('boom: no such tensor');

    const slow = join(work, 'slow.py');
    writeFileSync(slow, 'import time\ntime.sleep(30)\n');
    const t0 = Date.now();
    const late = (await runPython(slow, [], { timeoutMs: 1500 }).catch((e) => e)) as Error;
    expect(late.message).toContain('no exit within 1500 ms (killed)');
    expect(Date.now() - t0).toBeLessThan(15_000);
  }, T);
});

describe('check_load.py (MindSpore as the oracle)', () => {
  it('accepts a real CRC-trailed rank file against its expected tensors', async () => {
    const { stdout } = await runPython(checkLoad, [
      join(cases, 'crc', 'ckpt', 'rank_0', 'net-1_1.ckpt'),
      join(cases, 'crc', 'expected', 'ranks', 'rank_0.safetensors'),
    ]);
    expect(stdout).toBe(
      '{"crcChecked": true, "extra": [], "file": "net-1_1.ckpt", "format": "ckpt", "mismatches": [], "missing": [], "ok": true, "strings": {}, "tensors": 2}\n',
    );
  }, T);

  it('accepts every dtype, the scalars and reports the str value of the dtypes case', async () => {
    const { stdout } = await runPython(checkLoad, [
      join(cases, 'dtypes', 'ckpt', 'rank_1', 'net-1_1.ckpt'),
      join(cases, 'dtypes', 'expected', 'ranks', 'rank_1.safetensors'),
    ]);
    const report = JSON.parse(stdout);
    expect(report).toEqual({
      crcChecked: false,
      extra: [],
      file: 'net-1_1.ckpt',
      format: 'ckpt',
      mismatches: [],
      missing: [],
      ok: true,
      strings: { model_name: 'tiny-net-\u00e9' },
      tensors: 13,
    });
  }, T);

  it('accepts an encrypted (SM4-CBC) rank file with its key and a merged safetensors file', async () => {
    const c = JSON.parse(readFileSync(join(cases, 'encrypted-sm4-cbc', 'case.json'), 'utf8'));
    const enc = await runPython(checkLoad, [
      join(cases, 'encrypted-sm4-cbc', 'ckpt', 'rank_1', 'net-1_1.ckpt'),
      join(cases, 'encrypted-sm4-cbc', 'expected', 'ranks', 'rank_1.safetensors'),
      '--dec-key',
      c.decryption.keyHex,
      '--dec-mode',
      c.decryption.mode,
    ]);
    expect(JSON.parse(enc.stdout)).toMatchObject({ ok: true, tensors: 3, mismatches: [], missing: [] });
    const merged = join(cases, 'tutorial-matmul', 'expected', 'merged.safetensors');
    const st = await runPython(checkLoad, [merged, merged]);
    expect(JSON.parse(st.stdout)).toMatchObject({ ok: true, format: 'safetensors', tensors: 3 });
  }, T);

  it('rejects a rank file whose tensor bytes were tampered with, naming the tensor and the first differing byte', async () => {
    const src = join(cases, 'tutorial-matmul', 'ckpt', 'rank_0', 'net-1_1.ckpt');
    const bytes = readFileSync(src);
    // locate matmul_weight's content (rows 0-24 of the full weight) inside the file via the merged expectation
    const merged = readFileSync(join(cases, 'tutorial-matmul', 'expected', 'merged.safetensors'));
    const headerLen = Number(merged.readBigUInt64LE(0));
    const header = JSON.parse(merged.subarray(8, 8 + headerLen).toString('utf8'));
    const [b] = header.matmul_weight.data_offsets as [number, number];
    const firstRows = merged.subarray(8 + headerLen + b, 8 + headerLen + b + 24 * 16 * 4);
    const at = bytes.indexOf(firstRows);
    expect(at).toBeGreaterThan(0);
    const tampered = Buffer.from(bytes);
    tampered[at + 100] ^= 0x01;
    const file = join(work, 'tampered-net-1_1.ckpt');
    writeFileSync(file, tampered);
    const err = await runExpectingFailure([file, join(cases, 'tutorial-matmul', 'expected', 'ranks', 'rank_0.safetensors')]);
    expect(err.exitCode).toBe(1);
    expect(err.stdout).toBe(
      '{"crcChecked": false, "extra": [], "file": "tampered-net-1_1.ckpt", "format": "ckpt", "mismatches": [{"name": "matmul_weight", "reason": "bytes differ (first difference at byte 100 of 1536)"}], "missing": [], "ok": false, "strings": {}, "tensors": 3}\n',
    );
  }, T);

  it('rejects a file MindSpore cannot load (flipped byte under a CRC trailer) with MindSpore\'s own error', async () => {
    const file = join(work, 'net-1_1.ckpt');
    copyFileSync(join(fixtures, 'bad', 'crc-payload-flipped', 'net-1_1.ckpt'), file);
    const err = await runExpectingFailure([file, join(cases, 'crc', 'expected', 'ranks', 'rank_0.safetensors')]);
    expect(err.exitCode).toBe(2);
    expect(err.stdout).toBe(
      '{"crcChecked": true, "error": "ValueError: Failed to read the checkpoint file net-1_1.ckpt. May not have permission to read it, please check the correct of the file.", "file": "net-1_1.ckpt", "format": "ckpt", "ok": false}\n',
    );
  }, T);

  it('reports a wrong-shape tensor and a tensor missing from the file', async () => {
    // rank 0 of the 2-D split case against the merged expectation: every tensor has the slice shape, not
    // the full one; against another case's expectation: names missing and extra
    const file = join(cases, 'split-2d', 'ckpt', 'rank_0', 'net-1_1.ckpt');
    const err = await runExpectingFailure([file, join(cases, 'split-2d', 'expected', 'merged.safetensors')]);
    expect(err.exitCode).toBe(1);
    expect(JSON.parse(err.stdout).mismatches).toEqual([
      { name: 'v', reason: 'F32[3, 2] where F32[6, 4] was expected' },
      { name: 'w', reason: 'F32[2, 2] where F32[4, 4] was expected' },
    ]);
    const other = await runExpectingFailure([file, join(cases, 'tutorial-matmul', 'expected', 'ranks', 'rank_0.safetensors')]);
    expect(JSON.parse(other.stdout)).toMatchObject({ ok: false, missing: ['epoch_num', 'matmul_weight', 'step_num'], extra: ['v', 'w'] });
  }, T);
});

describe('MindSpore fixture set (no MindSpore needed)', () => {
  it('every case.json names files that exist, and the whole set stays small', () => {
    const names = readdirSync(cases).sort();
    expect(names.length).toBeGreaterThanOrEqual(18);
    let total = 0;
    const walk = (d: string) => {
      for (const e of readdirSync(d)) {
        const p = join(d, e);
        if (statSync(p).isDirectory()) walk(p);
        else total += statSync(p).size;
      }
    };
    walk(fixtures);
    expect(total).toBeLessThan(5 * 1024 * 1024);
    for (const name of names) {
      const dir = join(cases, name);
      const c = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8'));
      expect(['mindspore-ckpt', 'safetensors'], name).toContain(c.format);
      expect(existsSync(join(dir, c.strategy)), `${name}: ${c.strategy}`).toBe(true);
      expect(existsSync(join(dir, c.expected.merged)), `${name}: merged`).toBe(true);
      const ext = c.format === 'safetensors' ? 'safetensors' : 'ckpt';
      for (let r = 0; r < c.world; r++) {
        expect(existsSync(join(dir, c.checkpoint, `rank_${r}`, `net-1_1.${ext}`)), `${name}: rank ${r}`).toBe(true);
        expect(existsSync(join(dir, c.expected.ranks[String(r)])), `${name}: expected rank ${r}`).toBe(true);
      }
      for (const rs of c.expected.reshard ?? []) {
        expect(existsSync(join(dir, rs.dstStrategy)), `${name}: ${rs.dstStrategy}`).toBe(true);
        for (const f of Object.values(rs.ranks) as string[]) expect(existsSync(join(dir, f)), `${name}: ${f}`).toBe(true);
      }
      expect(c.oracle.agreed.length, `${name}: at least one MindSpore API agreed`).toBeGreaterThan(0);
    }
    const bad = JSON.parse(readFileSync(join(fixtures, 'bad', 'bad.json'), 'utf8'));
    for (const e of bad.files) expect(existsSync(join(fixtures, 'bad', e.path)), e.name).toBe(true);
  });
});
