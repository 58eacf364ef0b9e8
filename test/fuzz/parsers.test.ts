import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { indexCkpt } from '../../core/ckpt/reader.js';
import { memorySource } from '../../core/ckpt/decrypt.js';
import { ckptRecord, encryptCkpt, mapTensorRecord, utf32le } from '../../core/ckpt/record-builder.js';
import { encodeCrcTrailer } from '../../core/ckpt/crc.js';
import { ShardserveError } from '../../core/errors.js';
import { indexSafetensors } from '../../core/safetensors/reader.js';
import { parseStrategyFiles } from '../../core/strategy/reader.js';
import { serializeOnnx } from '../../core/onnx/model.js';
import { mlpNetwork, transformerNetwork } from '../../core/onnx/sample-networks.js';
import { readOnnxSkeleton } from '../../core/onnx/skeleton.js';
import { MUTATIONS, Rng, mutate, type Mutation } from './mutate.js';
import { crc32 } from 'node:zlib';

// Each parser gets ≥ 10,000 mutated inputs built from real MindSpore files and synthetic ones.
// Passing means: only ShardserveError comes out, no read past the end of the input (so no
// allocation sized by a lying length field), and every parse finishes within its deadline.
const CASES = Number(process.env.FUZZ_CASES ?? 10_000);
const DEADLINE_MS = 1000;
const FIXTURES = fileURLToPath(new URL('../fixtures/mindspore/', import.meta.url));

function walk(dir: string): string[] {
  return readdirSync(dir).flatMap((n) => (statSync(join(dir, n)).isDirectory() ? walk(join(dir, n)) : [join(dir, n)]));
}
const all = walk(join(FIXTURES, 'cases'));
const firstRanks = (ext: string) => all.filter((f) => f.endsWith(ext) && /rank_[01]\//.test(f) && !f.includes('/expected/'));
const KEY = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

interface Outcome {
  cases: number;
  ok: number;
  typedErrors: Map<string, number>;
  failures: string[];
  maxMs: number;
  ms: number;
}

async function fuzz(name: string, seeds: Uint8Array[], parse: (bytes: Uint8Array, i: number) => Promise<unknown>, seed: number, cases = CASES): Promise<Outcome> {
  const rng = new Rng(seed);
  const out: Outcome = { cases: 0, ok: 0, typedErrors: new Map(), failures: [], maxMs: 0, ms: 0 };
  const t0 = performance.now();
  for (let i = 0; i < cases; i++) {
    const kind: Mutation = MUTATIONS[i % MUTATIONS.length];
    const base = seeds[rng.int(seeds.length)];
    let input = mutate(rng, base, seeds, kind);
    if (rng.int(4) === 0) input = mutate(rng, input, seeds, rng.pick(MUTATIONS)); // stacked mutations
    const start = performance.now();
    try {
      await parse(input, i);
      out.ok++;
    } catch (e) {
      if (e instanceof ShardserveError && e.code !== 'OutOfRange') {
        out.typedErrors.set(e.code, (out.typedErrors.get(e.code) ?? 0) + 1);
      } else if (out.failures.length < 10) {
        out.failures.push(`${name} case ${i} (${kind}, seed ${seed}): ${e instanceof ShardserveError ? `read past the end: ${e.message}` : String((e as Error)?.stack ?? e)}`);
      }
    }
    const ms = performance.now() - start;
    out.maxMs = Math.max(out.maxMs, ms);
    if (ms > DEADLINE_MS && out.failures.length < 10) out.failures.push(`${name} case ${i} (${kind}) took ${ms.toFixed(0)} ms`);
    out.cases++;
  }
  out.ms = performance.now() - t0;
  console.log(`fuzz ${name}: ${out.cases} cases in ${(out.ms / 1000).toFixed(1)} s (max ${out.maxMs.toFixed(1)} ms/case): ${out.ok} parsed, ` +
    `${[...out.typedErrors.values()].reduce((a, b) => a + b, 0)} typed errors ${JSON.stringify(Object.fromEntries([...out.typedErrors].sort()))}, ${out.failures.length} failures`);
  return out;
}

describe('parser fuzzing (mutated real and synthetic inputs)', () => {
  it('the harness itself flags untyped errors and reads past the end', async () => {
    const r = await fuzz('meta', [Buffer.from('abc')], async (b, i) => {
      if (i % 2) throw new RangeError('boom');
      return memorySource('m', b).read(0, b.length + 1);
    }, 9, 4);
    expect(r.failures.length).toBe(4);
    expect(r.failures[0]).toMatch(/read past the end/);
    expect(r.failures[1]).toMatch(/RangeError: boom/);
  });

  it(`indexCkpt survives ${CASES} mutated inputs`, async () => {
    const body = Buffer.concat([
      ckptRecord('w', 'Float32', [2, 3], new Uint8Array(12)), ckptRecord('w', 'Float32', [2, 3], new Uint8Array(12)),
      ckptRecord('p', 'Uint8', [3], new Uint8Array(3), { packedDims: true, order: ['content', 'dims', 'type'] }),
      ckptRecord('s', 'str', [0], utf32le('héllo')), mapTensorRecord('m'), ckptRecord('g', 'Int32', [], new Uint8Array(4)),
    ]);
    const synthetic = [body, Buffer.concat([body, encodeCrcTrailer(crc32(body))]), encryptCkpt(body, KEY, 'AES-GCM', { blockSize: 64 }), encryptCkpt(body, KEY, 'AES-CBC', { blockSize: 50 })];
    const real = firstRanks('.ckpt').map((f) => readFileSync(f));
    expect(real.length).toBeGreaterThan(10);
    // Every other input also reads synchronously, as a local file does (the record walk's other path).
    const source = (bytes: Uint8Array, i: number) => {
      const s = memorySource('fuzz.ckpt', bytes);
      if (i % 4 >= 2) return s;
      return Object.assign(s, {
        readSync(offset: number, length: number) {
          if (!(offset >= 0 && length >= 0 && offset + length <= bytes.length)) throw new ShardserveError('OutOfRange', `fuzz.ckpt: read of ${length} bytes at ${offset} is past the end`);
          return bytes.slice(offset, offset + length);
        },
      });
    };
    const r = await fuzz('ckpt', [...real, ...synthetic], (bytes, i) => indexCkpt(source(bytes, i), { verifyCrc: i % 2 === 0, decryption: i % 3 === 0 ? { key: KEY } : undefined }), 1);
    expect(r.failures).toEqual([]);
    expect(r.cases).toBe(CASES);
  });

  it(`indexSafetensors survives ${CASES} mutated inputs`, async () => {
    const real = all.filter((f) => f.endsWith('.safetensors') && !f.includes('/reshard')).map((f) => readFileSync(f));
    expect(real.length).toBeGreaterThan(10);
    const r = await fuzz('safetensors', real, (bytes, i) => indexSafetensors(memorySource('fuzz.safetensors', bytes), { verifyCrc: i % 2 === 0 }), 2);
    expect(r.failures).toEqual([]);
    expect(r.cases).toBe(CASES);
  });

  it(`parseStrategyFiles survives ${CASES} mutated inputs (protobuf and JSON)`, async () => {
    const files = all.filter((f) => /strategy[^/]*\.(ckpt|json)$/.test(f) || /\/strategy\/[^/]+$/.test(f));
    const pb = files.filter((f) => f.endsWith('.ckpt')).map((f) => readFileSync(f));
    const json = files.filter((f) => f.endsWith('.json')).map((f) => readFileSync(f));
    expect(pb.length).toBeGreaterThan(5);
    expect(json.length).toBeGreaterThan(2);
    const r = await fuzz('strategy', [...pb, ...json], async (bytes, i) => {
      // Name by the seed's kind most of the time, so both decoders see both kinds of bytes.
      const looksJson = bytes[0] === 0x7b;
      const name = (i % 5 === 0 ? !looksJson : looksJson) ? 's.json' : 's.ckpt';
      return parseStrategyFiles([{ name, bytes }, ...(i % 7 === 0 ? [{ name: 'other.ckpt', bytes: pb[i % pb.length] }] : [])], 'fuzz');
    }, 3);
    expect(r.failures).toEqual([]);
    expect(r.cases).toBe(CASES);
  });

  it(`readOnnxSkeleton survives ${CASES} mutated inputs`, async () => {
    // A real MindSpore export (weights over the skip size among them) and models with large weights.
    const seeds = [readFileSync(fileURLToPath(new URL('../../examples/model/net.onnx', import.meta.url))), serializeOnnx(mlpNetwork([16, 160, 128, 4]).model), serializeOnnx(transformerNetwork(128, 4, 160).model)];
    const r = await fuzz('onnx', seeds, async (bytes, i) => {
      // Every other input as a local file (skips from 64 KiB; a source that reads synchronously is
      // one), the rest as a remote object (skips from 4 MiB: nothing here).
      const source = memorySource('fuzz.onnx', bytes);
      if (i % 2 === 0) Object.assign(source, { readSync: (offset: number, length: number) => bytes.slice(offset, offset + length) });
      const sk = await readOnnxSkeleton(source);
      await sk.fill(sk.skipped.keys());
    }, 4);
    expect(r.failures).toEqual([]);
    expect(r.cases).toBe(CASES);
  });
});
