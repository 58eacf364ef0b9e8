// The CLI's contract: every bad input gives one specific line on stderr and a non-zero exit, nothing
// is left behind, --help explains every command, and `shardserve` runs as a real process.
import { execFile } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { cli } from './cli-harness.js';
import { layoutOf, strategyOf } from '../../core/layout/test-builders.js';
import { strategyToJson } from '../../core/strategy/writer.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const fixtures = join(here, '..', 'fixtures', 'mindspore');
const tutorial = join(fixtures, 'cases', 'tutorial-matmul');
const bad = join(fixtures, 'bad');
const gcm = join(fixtures, 'cases', 'encrypted-aes-gcm');

afterEach(() => vi.restoreAllMocks());

const work = mkdtempSync(join(tmpdir(), 'cli-'));
const keyFile = join(work, 'gcm.key');
writeFileSync(keyFile, '00112233445566778899aabbccddeeff\n');
const wrongKey = join(work, 'wrong.key');
writeFileSync(wrongKey, '80112233445566778899aabbccddeeff\n');
const shortKey = join(work, 'short.key');
writeFileSync(shortKey, 'abc');
const extraParam = join(work, 'dst-extra.json');
writeFileSync(extraParam, strategyToJson(strategyOf([{ matmul_weight: layoutOf([4], [0, -1]), 'head.missing': layoutOf([4], [-1]) }])));
const T = ['--checkpoint', join(tutorial, 'ckpt'), '--strategy', join(tutorial, 'strategy.ckpt')];

interface BadCase {
  proves: string;
  args: string[];
  code: number;
  message: string;
}

const cases: BadCase[] = [
  { proves: 'a required flag is missing', args: ['merge', '--strategy', 's.ckpt', '--out', 'x.safetensors'], code: 2, message: 'shardserve merge: --checkpoint is required' },
  { proves: 'an unknown flag', args: ['plan', '--bogus'], code: 2, message: "shardserve plan: unknown option '--bogus'" },
  { proves: 'a rank that is not a number', args: ['plan', ...T, '--rank', 'abc'], code: 2, message: "shardserve plan: --rank must be an integer ≥ 0, got 'abc'" },
  { proves: 'a rank outside the destination', args: ['plan', ...T, '--tp', '4', '--rank', '4'], code: 1, message: "shardserve plan: --rank 4 is outside the destination's 4 ranks (1 stage(s) × 4)" },
  { proves: 'a nonzero rank for a single device', args: ['plan', ...T, '--rank', '1'], code: 1, message: 'shardserve plan: --rank 1: a single-device destination has only rank 0 (give --dst-strategy or --world/--stages/--tp)' },
  { proves: 'reshard without a destination', args: ['reshard', ...T, '--out', join(work, 'never')], code: 2, message: 'shardserve reshard: give --dst-strategy <file> or --world/--stages/--tp (use `merge` for a single device)' },
  { proves: 'both kinds of destination', args: ['plan', ...T, '--rank', '0', '--tp', '2', '--dst-strategy', join(tutorial, 'dst-tp4-2d.ckpt')], code: 2, message: 'shardserve plan: give either --dst-strategy or --world/--stages/--tp, not both' },
  { proves: 'world, stages and tp that disagree', args: ['plan', ...T, '--rank', '0', '--world', '8', '--stages', '1', '--tp', '4'], code: 2, message: 'shardserve plan: --world 8 must equal --stages 1 × --tp 4 = 4' },
  { proves: 'a stage count training did not have', args: ['layout', '--strategy', join(tutorial, 'strategy.ckpt'), '--stages', '2', '--tp', '2', '--out', join(work, 'p.json')], code: 1, message: `shardserve layout: --stages 2 does not match the 1 pipeline stage(s) of ${join(tutorial, 'strategy.ckpt')} (pipeline inference keeps the training stages; use 1)` },
  { proves: 'a layout output that is not JSON', args: ['layout', '--strategy', join(tutorial, 'strategy.ckpt'), '--tp', '2', '--out', join(work, 'p.ckpt')], code: 2, message: `shardserve layout: --out ${join(work, 'p.ckpt')}: the inference strategy is written as MindSpore JSON, so the name must end in .json` },
  { proves: 'an unknown output format', args: ['merge', ...T, '--out', join(work, 'm.safetensors'), '--format', 'zip'], code: 2, message: "shardserve merge: --format must be safetensors or ckpt, got 'zip'" },
  { proves: 'an output name without a format', args: ['merge', ...T, '--out', join(work, 'm.bin')], code: 2, message: `shardserve merge: --out ${join(work, 'm.bin')}: name it .safetensors or .ckpt (or give --format)` },
  { proves: 'a format that contradicts the name', args: ['merge', ...T, '--out', join(work, 'm.ckpt'), '--format', 'safetensors'], code: 2, message: `shardserve merge: --out ${join(work, 'm.ckpt')} does not match --format safetensors` },
  { proves: 'a checkpoint directory that does not exist', args: ['merge', '--checkpoint', join(work, 'nope'), '--strategy', join(tutorial, 'strategy.ckpt'), '--out', join(work, 'm.safetensors')], code: 1, message: `shardserve merge: ${join(work, 'nope')}: no such file or directory` },
  { proves: 'a strategy that does not exist', args: ['merge', '--checkpoint', join(tutorial, 'ckpt'), '--strategy', join(work, 'nope.ckpt'), '--out', join(work, 'm.safetensors')], code: 1, message: `shardserve merge: ${join(work, 'nope.ckpt')}: no such strategy file or directory` },
  { proves: 'a destination parameter the checkpoint lacks', args: ['plan', ...T, '--dst-strategy', extraParam, '--rank', '0'], code: 1, message: `shardserve plan: parameter 'head.missing' of the destination strategy is in neither the source strategy (${join(tutorial, 'strategy.ckpt')}) nor any checkpoint file` },
  { proves: 'a strategy for fewer devices than the checkpoint has', args: ['merge', '--checkpoint', join(tutorial, 'ckpt'), '--strategy', join(bad, 'strategy-4-devices.ckpt'), '--out', join(work, 'm.safetensors')], code: 1, message: `shardserve merge: ${join(tutorial, 'ckpt')}: has rank_4/ but the strategy ${join(bad, 'strategy-4-devices.ckpt')} describes 4 ranks (1 stage(s) × 4 devices); no strategy file covers rank_4..rank_7` },
  { proves: 'strategy files for only one of two stages', args: ['merge', '--checkpoint', join(fixtures, 'cases', 'pipeline-2stage', 'ckpt'), '--strategy', join(bad, 'strategy-missing-stage'), '--out', join(work, 'm.safetensors')], code: 1, message: `shardserve merge: ${join(fixtures, 'cases', 'pipeline-2stage', 'ckpt')}: has rank_4/ but the strategy ${join(bad, 'strategy-missing-stage')} describes 4 ranks (1 stage(s) × 4 devices); no strategy file covers rank_4..rank_7` },
  { proves: 'a merged strategy with a stage gap', args: ['merge', '--checkpoint', join(fixtures, 'cases', 'pipeline-2stage', 'ckpt'), '--strategy', join(bad, 'strategy-stage-gap.ckpt'), '--out', join(work, 'm.safetensors')], code: 1, message: `shardserve merge: ${join(bad, 'strategy-stage-gap.ckpt')}: strategy does not contain all pipeline stages: found stages [0,2], expected 0..2` },
  { proves: 'an encrypted checkpoint without a key', args: ['merge', '--checkpoint', join(gcm, 'ckpt'), '--strategy', join(gcm, 'strategy.ckpt'), '--out', join(work, 'm.safetensors')], code: 1, message: `shardserve merge: ${join(gcm, 'ckpt', 'rank_0', 'net-1_1.ckpt')}: checkpoint is encrypted (AES-GCM); a decryption key is required (give it with --key-file <file> or --key-env <VAR>, and --dec-mode)` },
  { proves: 'layout of an encrypted checkpoint without a key', args: ['layout', '--strategy', join(gcm, 'strategy.ckpt'), '--tp', '2', '--out', join(work, 'p-gcm.json'), '--checkpoint', join(gcm, 'ckpt')], code: 1, message: `shardserve layout: ${join(gcm, 'ckpt', 'rank_0', 'net-1_1.ckpt')}: checkpoint is encrypted (AES-GCM); a decryption key is required (give it with --key-file <file> or --key-env <VAR>, and --dec-mode)` },
  { proves: 'a key for layout without a checkpoint to read', args: ['layout', '--strategy', join(gcm, 'strategy.ckpt'), '--tp', '2', '--out', join(work, 'p-gcm.json'), '--key-file', keyFile], code: 2, message: 'shardserve layout: a key is only read with --checkpoint (the strategy is never encrypted)' },
  { proves: 'the wrong key', args: ['merge', '--checkpoint', join(gcm, 'ckpt'), '--strategy', join(gcm, 'strategy.ckpt'), '--out', join(work, 'm.safetensors'), '--key-file', wrongKey], code: 1, message: `shardserve merge: ${join(gcm, 'ckpt', 'rank_0', 'net-1_1.ckpt')}: encrypted segment at offset 0: AES-GCM tag mismatch (wrong key or corrupted file)` },
  { proves: 'a key file of the wrong size', args: ['merge', '--checkpoint', join(gcm, 'ckpt'), '--strategy', join(gcm, 'strategy.ckpt'), '--out', join(work, 'm.safetensors'), '--key-file', shortKey], code: 1, message: `shardserve merge: ${shortKey}: key must be 16, 24 or 32 raw bytes or as many bytes in hex, got 3 bytes` },
  { proves: 'a key variable that is not set', args: ['merge', '--checkpoint', join(gcm, 'ckpt'), '--strategy', join(gcm, 'strategy.ckpt'), '--out', join(work, 'm.safetensors'), '--key-env', 'SHARDSERVE_TEST_UNSET_KEY'], code: 2, message: 'shardserve merge: environment variable SHARDSERVE_TEST_UNSET_KEY (from --key-env) is not set' },
  { proves: 'an unknown decryption mode', args: ['merge', ...T, '--out', join(work, 'm.safetensors'), '--key-file', keyFile, '--dec-mode', 'ROT13'], code: 2, message: "shardserve merge: --dec-mode must be one of AES-GCM, AES-CBC, SM4-CBC, got 'ROT13'" },
  { proves: 'a truncated checkpoint file', args: ['inspect', join(bad, 'truncated', 'net-1_1.ckpt')], code: 1, message: `shardserve inspect: ${join(bad, 'truncated', 'net-1_1.ckpt')}: corrupt checkpoint at offset 1: length-delimited field runs past the end of its message` },
  { proves: 'an empty checkpoint file', args: ['inspect', join(bad, 'empty', 'net-1_1.ckpt')], code: 1, message: `shardserve inspect: ${join(bad, 'empty', 'net-1_1.ckpt')}: checkpoint file is empty` },
  { proves: 'a CRC mismatch when verifying', args: ['inspect', '--verify-crc', join(bad, 'crc-payload-flipped', 'net-1_1.ckpt')], code: 1, message: `shardserve inspect: ${join(bad, 'crc-payload-flipped', 'net-1_1.ckpt')}: CRC check failed: trailer says 3661982895, the data has 3877979423` },
  { proves: 'nothing to inspect', args: ['inspect'], code: 2, message: 'shardserve inspect: give a checkpoint file, directory or URI to inspect' },
];

describe('bad input gives one specific line and a non-zero exit', () => {
  it.each(cases)('$proves', async ({ args, code, message }) => {
    const r = await cli(args);
    expect(r.stderr).toBe(message + '\n');
    expect(r.code).toBe(code);
    expect(r.stdout).toBe('');
  });

  it('leaves no output behind when a reshard fails part-way', async () => {
    const out = join(work, 'failed-reshard');
    const r = await cli(['reshard', '--checkpoint', join(gcm, 'ckpt'), '--strategy', join(gcm, 'strategy.ckpt'), '--tp', '2', '--out', out]);
    expect(r.code).toBe(1);
    expect(existsSync(out)).toBe(false);
    const existing = join(work, 'existing-out');
    mkdirSync(existing);
    writeFileSync(join(existing, 'keep.txt'), 'x');
    await cli(['reshard', '--checkpoint', join(gcm, 'ckpt'), '--strategy', join(gcm, 'strategy.ckpt'), '--tp', '2', '--out', existing]);
    expect(readdirSync(existing)).toEqual(['keep.txt']);
  });

  it('leaves no output behind when a merge fails', async () => {
    const r = await cli(['merge', '--checkpoint', join(gcm, 'ckpt'), '--strategy', join(gcm, 'strategy.ckpt'), '--out', join(work, 'merge-fail', 'm.safetensors')]);
    expect(r.code).toBe(1);
    expect(existsSync(join(work, 'merge-fail'))).toBe(false);
  });
});

describe('encrypted checkpoints', () => {
  it('layout reads the full shapes of an encrypted checkpoint (protobuf strategy) with its key', async () => {
    const out = join(work, 'predict-gcm.json');
    const r = await cli(['layout', '--strategy', join(gcm, 'strategy.ckpt'), '--tp', '2', '--out', out, '--checkpoint', join(gcm, 'ckpt'), '--key-file', keyFile, '--dec-mode', 'AES-GCM']);
    expect([r.code, r.stderr]).toEqual([0, '']);
    const items = JSON.parse(readFileSync(out, 'utf8')).parallel_layout_item;
    // case.json of encrypted-aes-gcm: w [6,5] split on dim 0, i [4] replicated
    expect(Object.fromEntries(Object.entries(items).map(([k, v]: [string, any]) => [k, [v.dev_matrix, v.tensor_map, v.tensor_shape]]))).toEqual({
      w: [[2], [0, -1], [6, 5]],
      i: [[2], [-1], [4]],
    });
  });
});

describe('CRC', () => {
  it('merge --verify-crc refuses a rank file whose payload no longer matches its trailer; without it the file is read', async () => {
    const crcCase = join(fixtures, 'cases', 'crc');
    const ckpt = join(work, 'crc-flipped');
    cpSync(join(crcCase, 'ckpt'), ckpt, { recursive: true });
    copyFileSync(join(bad, 'crc-payload-flipped', 'net-1_1.ckpt'), join(ckpt, 'rank_0', 'net-1_1.ckpt'));
    const spec = JSON.parse(readFileSync(join(crcCase, 'case.json'), 'utf8'));
    const out = join(work, 'crc-merged.safetensors');
    const r = await cli(['merge', '--checkpoint', ckpt, '--strategy', join(crcCase, spec.strategy), '--out', out, '--verify-crc']);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(`shardserve merge: ${join(ckpt, 'rank_0', 'net-1_1.ckpt')}: CRC check failed: trailer says 3661982895, the data has 3877979423\n`);
    expect(existsSync(out)).toBe(false);
    const ok = await cli(['merge', '--checkpoint', ckpt, '--strategy', join(crcCase, spec.strategy), '--out', out]);
    expect(ok.code).toBe(0);
  });
});

describe('missing ranks', () => {
  const missing = join(bad, 'missing-rank');
  it('inspect names the rank the strategy expects but the checkpoint lacks', async () => {
    const r = await cli(['inspect', join(missing, 'ckpt'), '--strategy', join(missing, 'strategy.ckpt'), '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).missingRanks).toEqual([3]);
  });
  it('merge reads the replica on rank 7 instead of the missing rank 3', async () => {
    const out = join(work, 'missing-merged.safetensors');
    const r = await cli(['merge', '--checkpoint', join(missing, 'ckpt'), '--strategy', join(missing, 'strategy.ckpt'), '--out', out]);
    expect(r.code).toBe(0);
    expect(readFileSync(out).equals(readFileSync(join(tutorial, 'expected', 'merged.safetensors')))).toBe(true);
    const p = await cli(['plan', '--checkpoint', join(missing, 'ckpt'), '--strategy', join(missing, 'strategy.ckpt'), '--rank', '0', '--json']);
    expect(JSON.parse(p.stdout).files.map((f: { rank: number }) => f.rank)).toEqual([0, 1, 2, 7]);
  });
});

describe('working commands', () => {
  it('every command explains its flags with an example', async () => {
    for (const name of ['inspect', 'layout', 'plan', 'reshard', 'merge']) {
      const r = await cli([name, '--help']);
      expect(r.code).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`^Usage: shardserve ${name} `));
      expect(r.stdout).toMatch(/Example/);
    }
  });

  it('plan --json gives the totals and the per-file ranges', async () => {
    const r = await cli(['plan', ...T, '--dst-strategy', join(tutorial, 'dst-tp4-2d.ckpt'), '--rank', '3', '--json']);
    expect(r.code).toBe(0);
    const plan = JSON.parse(r.stdout);
    expect(plan.sliceBytes).toBe(24 * 16 * 4 + 16);
    expect(plan.readBytes).toBe(plan.sliceBytes);
    expect(plan.files.map((f: { rank: number }) => f.rank)).toEqual([2, 3]);
    for (const f of plan.files) expect(f.bytes).toBe(f.ranges.reduce((s: number, [, len]: [number, number]) => s + len, 0));
  });

  it('layout writes a MindSpore JSON strategy that reshard accepts', async () => {
    const predict = join(work, 'predict.json');
    const l = await cli(['layout', '--strategy', join(tutorial, 'strategy.ckpt'), '--tp', '2', '--out', predict]);
    expect(l.stdout).toBe(`wrote ${predict}: 1 stage(s) × 2 rank(s), 1 parameters (1 split, 0 replicated)\n`);
    const json = JSON.parse(readFileSync(predict, 'utf8'));
    expect(json.parallel_layout_item.matmul_weight.dev_matrix).toEqual([2]);
    expect(json.parallel_layout_item.matmul_weight.tensor_map).toEqual([0, -1]);
    const out = join(work, 'tp2');
    const r = await cli(['reshard', ...T, '--dst-strategy', predict, '--out', out, '--format', 'ckpt']);
    expect(r.code).toBe(0);
    expect(readdirSync(out).sort()).toEqual(['rank_0', 'rank_1']);
    expect(readdirSync(join(out, 'rank_1'))).toEqual(['model.ckpt']);
  });

  it('inspect shows a file, a directory and a strategy', async () => {
    const f = await cli(['inspect', join(tutorial, 'ckpt', 'rank_5', 'net-1_1.ckpt')]);
    expect(f.stdout.split('\n')[1]).toMatch(/^ {2}matmul_weight +F32 +\[24,16\] +1\.5 KiB$/);
    const one = await cli(['inspect', join(tutorial, 'ckpt', 'rank_2'), '--json']);
    expect(JSON.parse(one.stdout).files.map((x: { tensors: unknown[] }) => x.tensors.length)).toEqual([3]);
    const text = (await cli(['inspect', join(tutorial, 'ckpt')])).stdout.split('\n');
    expect(text.filter((l) => l.startsWith('rank '))).toEqual(['rank 0', 'rank 1', 'rank 2', 'rank 3', 'rank 4', 'rank 5', 'rank 6', 'rank 7']);
    const staged = (await cli(['inspect', join(tutorial, 'ckpt'), '--strategy', join(tutorial, 'strategy.ckpt')])).stdout.split('\n');
    expect(staged.filter((l) => l.startsWith('rank ')).slice(0, 2)).toEqual(['rank 0  (stage 0)', 'rank 1  (stage 0)']);
    const d = await cli(['inspect', join(tutorial, 'ckpt'), '--json']);
    expect(JSON.parse(d.stdout).ranks).toHaveLength(8);
    const s = await cli(['inspect', join(tutorial, 'strategy.ckpt'), '--json']);
    expect(JSON.parse(s.stdout).params[0]).toMatchObject({ name: 'matmul_weight', layouts: [{ devMatrix: [2, 1, 4, 1], tensorMap: [1, 0], parts: [4, 1] }] });
  });

  it('inspect shows a directory of per-rank protobuf strategy files as one strategy, not as checkpoints', async () => {
    const r = await cli(['inspect', join(fixtures, 'cases', 'pipeline-2stage', 'strategy'), '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout);
    expect({ kind: s.kind, stages: s.stages, devicesPerStage: s.devicesPerStage }).toEqual({ kind: 'strategy', stages: 2, devicesPerStage: 4 });
    expect(s.params.find((p: { name: string }) => p.name === 'embedding.embedding_table').stages).toEqual([0, 1]);
  });

  it('runs as a real process: npx shardserve plan --json', async () => {
    const { stdout } = await promisify(execFile)('node', [join(root, 'bin', 'shardserve.mjs'), 'plan', ...T, '--tp', '4', '--rank', '1', '--json'], { cwd: root, timeout: 60_000 });
    const plan = JSON.parse(stdout);
    expect(plan.readBytes).toBe(plan.sliceBytes);
    expect(plan.files.map((f: { rank: number }) => f.rank)).toEqual([1]);
  });

  it('a bad input in a real process exits 1 with one line and no stack', async () => {
    const r = await promisify(execFile)('node', [join(root, 'bin', 'shardserve.mjs'), 'inspect', join(bad, 'empty', 'net-1_1.ckpt')], { cwd: root, timeout: 60_000 }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => ({ code: e.code, stderr: e.stderr }),
    );
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n').filter((l) => !l.startsWith('npm warn'))).toEqual([`shardserve inspect: ${join(bad, 'empty', 'net-1_1.ckpt')}: checkpoint file is empty`]);
  });
});
