// Checkpoints no test has seen, from real MindSpore: test/fixtures/mindspore/unseen.py draws a training
// layout per seed (stages, device matrix, tensor maps, optimizer sharding, tied parameters, dtypes,
// strategy form), has MindSpore save every rank's slice and merge them (load_distributed_checkpoint
// with predict_strategy=None, transform_checkpoints), stored as .ckpt or safetensors, with a CRC or
// encrypted, and this suite runs our CLI on the result as a
// user would: merge, layout + reshard (safetensors and .ckpt) and plan, checked against MindSpore.
// Other seeds: `python test/fixtures/mindspore/unseen.py make --out DIR --seeds ...`.
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { runPython } from '../harness/python.js';
import { cli } from './cli-harness.js';

const script = join(dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'mindspore', 'unseen.py');
const SEEDS = [1, 4, 5, 7, 10, 12];

interface MadeCase {
  dir: string; seed: number; description: string; strategy: string; stages: number; devicesPerStage: number;
  format: 'ckpt' | 'safetensors'; crc: boolean; encryption: { keyHex: string; mode: string } | null; oracle: { agreed: string[] };
}

describe('checkpoints no test has seen (random layouts, saved and merged by MindSpore at test time)', () => {
  let made: MadeCase[] = [];
  const work = mkdtempSync(join(tmpdir(), 'shardserve-unseen-'));
  beforeAll(async () => {
    const { stdout } = await runPython(script, ['make', '--out', join(work, 'cases'), '--seeds', SEEDS.join(',')], { timeoutMs: 300_000 });
    made = stdout.trim().split('\n').map((l) => JSON.parse(l));
  }, 320_000);

  it('MindSpore made every case and its own loaders merged each (the oracle)', () => {
    expect(made.map((c) => c.seed)).toEqual(SEEDS);
    // The seeds cover the ways a rank file is stored.
    expect(new Set(made.map((c) => c.format))).toEqual(new Set(['ckpt', 'safetensors']));
    expect(made.some((c) => c.crc) && made.some((c) => c.encryption)).toBe(true);
    for (const c of made) expect(c.oracle.agreed.length, c.description).toBeGreaterThan(0);
  });

  describe.each(SEEDS.map((seed, i) => ({ seed, i })))('seed $seed', ({ seed, i }) => {
    const c = () => made[i];
    // An encrypted case's key goes in a file (keys are never flag values), in hex as MindSpore users keep them.
    const keyFile = join(work, `key-${seed}.hex`);
    const keyArgs = () => {
      const e = c().encryption;
      if (!e) return [];
      if (!existsSync(keyFile)) writeFileSync(keyFile, e.keyHex + '\n');
      return ['--key-file', keyFile, '--dec-mode', e.mode];
    };
    const args = () => ['--checkpoint', join(c().dir, 'ckpt'), '--strategy', join(c().dir, c().strategy), ...keyArgs()];

    it('merge equals MindSpore\'s merged tensors byte for byte', async () => {
      const out = join(work, `merged-${seed}.safetensors`);
      const r = await cli(['merge', ...args(), '--out', out]);
      expect([r.code, r.stderr]).toEqual([0, '']);
      expect(readFileSync(out).equals(readFileSync(join(c().dir, 'expected', 'merged.safetensors'))), c().description).toBe(true);
    });

    it.each([
      ['half the tensor-parallel ranks a stage', (x: MadeCase) => ({ stages: x.stages, tp: x.devicesPerStage / 2 })],
      ['one stage of as many ranks as a training stage (pipeline stages folded into one)', (x: MadeCase) => ({ stages: 1, tp: x.devicesPerStage })],
    ])('layout + reshard to %s give every rank its exact slice, and MindSpore loads the .ckpt output', async (label, targetOf) => {
      const { stages, tp } = targetOf(c());
      const world = stages * tp;
      const tag = `${seed}-${stages}x${tp}`;
      const predict = join(work, `predict-${tag}.json`);
      const target = ['--world', String(world), '--stages', String(stages), '--tp', String(tp)];
      const l = await cli(['layout', '--strategy', join(c().dir, c().strategy), ...target, '--out', predict, '--checkpoint', join(c().dir, 'ckpt'), ...keyArgs()]);
      expect([l.code, l.stderr]).toEqual([0, '']);
      const out = join(work, `resharded-${tag}`);
      const ckptOut = join(work, `resharded-ckpt-${tag}`);
      for (const [dir, extra] of [[out, []], [ckptOut, ['--format', 'ckpt', '--crc']]] as const) {
        const r = await cli(['reshard', ...args(), '--dst-strategy', predict, '--out', dir, '--json', ...extra]);
        expect([r.code, r.stderr]).toEqual([0, '']);
        expect(JSON.parse(r.stdout).ranks).toHaveLength(world);
      }
      const { stdout } = await runPython(script, ['check', c().dir, predict, out, ckptOut], { timeoutMs: 300_000 });
      expect(stdout, `${label}: ${c().description}`).toMatch(new RegExp(`^ok \\d+ tensors in ${world} ranks, .ckpt output loaded by MindSpore`));

      // Every rank reads exactly its slice: no byte twice, none it does not keep.
      for (let rank = 0; rank < world; rank++) {
        const p = await cli(['plan', ...args(), '--dst-strategy', predict, '--rank', String(rank), '--json']);
        expect([p.code, p.stderr]).toEqual([0, '']);
        const plan = JSON.parse(p.stdout);
        expect(plan.readBytes, `rank ${rank}: ${c().description}`).toBe(plan.sliceBytes);
      }
    });
  });
});
