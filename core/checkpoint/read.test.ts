import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { indexCkpt } from '../ckpt/reader.js';
import { DTYPE_BYTES } from '../dtype.js';
import { ShardserveError } from '../errors.js';
import { rankBox } from '../layout/box.js';
import { indexSafetensors, readUnifiedSafetensorsDir } from '../safetensors/reader.js';
import { openStorage } from '../storage/storage.js';
import { openLocalSource } from '../storage/source.js';
import { parseStrategyFiles } from '../strategy/reader.js';
import type { Strategy } from '../strategy/types.js';
import { readTensorBytes, tensorFileRanges } from './read.js';
import type { CheckpointIndex, DecryptionOptions, TensorEntry } from './types.js';

const FIXTURES = fileURLToPath(new URL('../../test/fixtures/mindspore/', import.meta.url));
const CASES = join(FIXTURES, 'cases');

describe('tensorFileRanges', () => {
  const entry: TensorEntry = { name: 'w', dtype: 'U8', shape: [30], byteLength: 30, pieces: [{ offset: 100, length: 10 }, { offset: 110, length: 10 }, { offset: 500, length: 10 }] };
  it.each([
    { what: 'inside one piece', off: 2, len: 5, want: [{ offset: 102, length: 5 }] },
    { what: 'across file-contiguous pieces (merged)', off: 5, len: 10, want: [{ offset: 105, length: 10 }] },
    { what: 'across a gap between pieces', off: 15, len: 10, want: [{ offset: 115, length: 5 }, { offset: 500, length: 5 }] },
    { what: 'the whole tensor', off: 0, len: 30, want: [{ offset: 100, length: 20 }, { offset: 500, length: 10 }] },
    { what: 'nothing', off: 30, len: 0, want: [] },
  ])('maps $what', ({ off, len, want }) => {
    expect(tensorFileRanges(entry, off, len)).toEqual(want);
  });
  it('rejects a run outside the tensor', () => {
    expect(() => tensorFileRanges(entry, 25, 6)).toThrow("parameter 'w': bytes [25, 31) are outside its 30 bytes");
  });
});

// ------------------------------------------------------------- real MindSpore fixtures

interface CaseJson {
  checkpoint: string;
  strategy: string;
  format: 'mindspore-ckpt' | 'safetensors';
  crc: boolean;
  world: number;
  devicesPerStage: number;
  expected: { merged: string; ranks?: Record<string, string> };
  decryption?: { keyHex: string; mode: DecryptionOptions['mode'] };
  strings?: Record<string, string>;
  tensors: Record<string, { mindsporeType?: string }>;
}

const caseNames = existsSync(CASES) ? readdirSync(CASES).filter((c) => existsSync(join(CASES, c, 'case.json'))).sort() : [];

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => (statSync(join(dir, n)).isDirectory() ? files(join(dir, n)) : [join(dir, n)]));
}

function strategyOf(path: string): Strategy {
  const list = statSync(path).isDirectory() ? readdirSync(path).sort().map((n) => join(path, n)) : [path];
  return parseStrategyFiles(list.map((name) => ({ name, bytes: readFileSync(name) })), path);
}

async function bytesOf(ix: CheckpointIndex, e: TensorEntry): Promise<Buffer> {
  return Buffer.from(await readTensorBytes(ix, e, 0, e.byteLength));
}

/** C-order bytes of `box` cut out of a full tensor. */
function cut(full: Buffer, shape: number[], elem: number, box: { offsets: number[]; sizes: number[] }): Buffer {
  if (shape.length === 0) return full;
  const out: Buffer[] = [];
  const strides = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1) * elem);
  const walk = (dim: number, base: number) => {
    if (dim === shape.length - 1) {
      const start = base + box.offsets[dim] * elem;
      out.push(full.subarray(start, start + box.sizes[dim] * elem));
      return;
    }
    for (let i = 0; i < box.sizes[dim]; i++) walk(dim + 1, base + (box.offsets[dim] + i) * strides[dim]);
  };
  walk(0, 0);
  return Buffer.concat(out);
}

describe('real MindSpore fixtures', () => {
  it('exist (H-fixtures commits them under test/fixtures/mindspore/cases)', () => {
    expect(caseNames.length).toBeGreaterThanOrEqual(10);
  });

  it.each(caseNames)('%s: every rank file indexes and holds exactly its slice of the merged tensors', async (name) => {
    const dir = join(CASES, name);
    const c = JSON.parse(readFileSync(join(dir, 'case.json'), 'utf8')) as CaseJson;
    const decryption = c.decryption ? { key: Buffer.from(c.decryption.keyHex, 'hex'), mode: c.decryption.mode } : undefined;
    const strategy = strategyOf(join(dir, c.strategy));
    const merged = await indexSafetensors(await openLocalSource(join(dir, c.expected.merged)));
    const ext = c.format === 'safetensors' ? '.safetensors' : '.ckpt';
    const rankFiles = files(join(dir, c.checkpoint)).filter((f) => f.endsWith(ext));
    expect(rankFiles.length).toBe(c.world);
    let compared = 0;
    for (const file of rankFiles) {
      const rank = Number(/rank_(\d+)/.exec(file)![1]);
      const src = await openLocalSource(file);
      const ix = c.format === 'safetensors' ? await indexSafetensors(src, { verifyCrc: c.crc }) : await indexCkpt(src, { verifyCrc: c.crc, decryption });
      expect(ix.crc).toBe(c.crc ? 'verified' : 'absent');
      expect(ix.encryption).toBe(c.decryption?.mode ?? 'none');
      for (const [k, v] of Object.entries(c.strings ?? {})) expect(ix.strings.get(k)?.value).toBe(v);
      for (const [k, t] of Object.entries(c.tensors)) {
        if (t.mindsporeType === 'Int4') expect(ix.notes).toContain(`tensor '${k}' is Int4 (qint4x2, two values per byte) stored as I8`);
      }
      const perRank = c.expected.ranks?.[String(rank)];
      const expectedRank = perRank ? await indexSafetensors(await openLocalSource(join(dir, perRank))) : undefined;
      const stage = Math.floor(rank / strategy.stageDevices);
      for (const e of ix.tensors.values()) {
        const got = await bytesOf(ix, e);
        const m = merged.tensors.get(e.name);
        const layout = strategy.params.get(e.name)?.layoutByStage.get(stage);
        let want: Buffer;
        if (expectedRank) {
          want = await bytesOf(expectedRank, expectedRank.tensors.get(e.name)!);
        } else if (!layout) {
          want = await bytesOf(merged, m!); // not sharded (step counters, append_dict scalars)
        } else {
          const box = rankBox(layout, m!.shape, rank % strategy.stageDevices, { param: e.name });
          expect(box.sizes, `${file} ${e.name}`).toEqual(e.shape);
          want = cut(await bytesOf(merged, m!), m!.shape, DTYPE_BYTES[m!.dtype], box);
        }
        expect(got.equals(want), `${file}: ${e.name}`).toBe(true);
        compared++;
      }
      await src.close();
    }
    expect(compared).toBeGreaterThan(0);
  });

  it('readUnifiedSafetensorsDir maps the tensors of MindSpore\'s unified_safetensors output', async () => {
    const storage = await openStorage(join(CASES, 'safetensors'));
    expect(await readUnifiedSafetensorsDir(storage, 'unified')).toEqual({
      files: ['unified/part0.safetensors'], weightMap: new Map([['w', 'unified/part0.safetensors'], ['b', 'unified/part0.safetensors']]),
      totalSize: 88, hyperParamFile: 'unified/hyper_param.safetensors',
    });
  });

  it('the unified safetensors directory indexes; part0 carries rank 0\'s stale crc_num (MindSpore copies the metadata)', async () => {
    const dir = join(CASES, 'safetensors', 'unified');
    const part = await indexSafetensors(await openLocalSource(join(dir, 'part0.safetensors')));
    const merged = await indexSafetensors(await openLocalSource(join(CASES, 'safetensors', 'expected', 'merged.safetensors')));
    for (const e of part.tensors.values()) expect((await bytesOf(part, e)).equals(await bytesOf(merged, merged.tensors.get(e.name)!))).toBe(true);
    await expect(indexSafetensors(await openLocalSource(join(dir, 'part0.safetensors')), { verifyCrc: true })).rejects.toThrow(/CRC check failed/);
  });
});

describe('real damaged MindSpore files (test/fixtures/mindspore/bad)', () => {
  const BAD = join(FIXTURES, 'bad');
  const key = (hex: string) => ({ key: Buffer.from(hex, 'hex') });
  const cases: Array<{ name: string; path: string; run: (p: string) => Promise<unknown>; message: RegExp }> = [
    { name: 'truncated record', path: 'truncated/net-1_1.ckpt', run: async (p) => indexCkpt(await openLocalSource(p)), message: /truncated\/net-1_1\.ckpt: corrupt checkpoint at offset \d+: .*past the end/ },
    { name: 'CRC payload flipped', path: 'crc-payload-flipped/net-1_1.ckpt', run: async (p) => indexCkpt(await openLocalSource(p), { verifyCrc: true }), message: /crc-payload-flipped\/net-1_1\.ckpt: CRC check failed: trailer says \d+, the data has \d+$/ },
    { name: 'CRC trailer flipped', path: 'crc-trailer-flipped/net-1_1.ckpt', run: async (p) => indexCkpt(await openLocalSource(p), { verifyCrc: true }), message: /crc-trailer-flipped\/net-1_1\.ckpt: CRC check failed/ },
    { name: 'wrong key', path: 'wrong-key/net-1_1.ckpt', run: async (p) => indexCkpt(await openLocalSource(p), { decryption: key('80112233445566778899aabbccddeeff') }), message: /wrong-key\/net-1_1\.ckpt: encrypted segment at offset 0: AES-GCM tag mismatch \(wrong key or corrupted file\)$/ },
    { name: 'GCM ciphertext flipped', path: 'gcm-ciphertext-flipped/net-1_1.ckpt', run: async (p) => indexCkpt(await openLocalSource(p), { decryption: key('00112233445566778899aabbccddeeff') }), message: /gcm-ciphertext-flipped\/net-1_1\.ckpt: encrypted segment at offset 0: AES-GCM tag mismatch/ },
    { name: 'encrypted, no key', path: 'encrypted-no-key/net-1_1.ckpt', run: async (p) => indexCkpt(await openLocalSource(p)), message: /encrypted-no-key\/net-1_1\.ckpt: checkpoint is encrypted \(AES-CBC\); a decryption key is required$/ },
    { name: 'empty', path: 'empty/net-1_1.ckpt', run: async (p) => indexCkpt(await openLocalSource(p)), message: /empty\/net-1_1\.ckpt: checkpoint file is empty$/ },
    { name: 'strategy stage gap', path: 'strategy-stage-gap.ckpt', run: async (p) => strategyOf(p), message: /strategy-stage-gap\.ckpt: strategy does not contain all pipeline stages: found stages \[0,2\], expected 0\.\.2$/ },
  ];
  it.each(cases)('$name', async ({ path, run, message }) => {
    const err = await run(join(BAD, path)).then(() => undefined, (e) => e);
    expect(err).toBeInstanceOf(ShardserveError);
    expect(err.message).toMatch(message);
  });

  it('the CRC-flipped payload still parses without verification, as in MindSpore', async () => {
    const ix = await indexCkpt(await openLocalSource(join(BAD, 'crc-payload-flipped/net-1_1.ckpt')));
    expect(ix.crc).toBe('not-checked');
  });
});
