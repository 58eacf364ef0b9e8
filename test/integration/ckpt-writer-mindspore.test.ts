import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readTensorBytes } from '../../core/checkpoint/read.js';
import { createTensorFileWriter, type TensorFileWriterOptions } from '../../core/checkpoint/writer.js';
import type { CheckpointFormat } from '../../core/checkpoint/types.js';
import { indexSafetensors } from '../../core/safetensors/reader.js';
import { openLocalSource } from '../../core/storage/source.js';
import { ensurePythonVenv, runPython } from '../harness/python.js';

// Our writer's files, loaded by real MindSpore (load_checkpoint, crc_check when the file has a CRC)
// and compared bitwise with the tensors they were written from. The source is MindSpore's own merge
// of the `dtypes` fixture: every dtype, bf16 included, and integer/float/bool scalars.
const CHECK_LOAD = 'test/fixtures/mindspore/check_load.py';
const DTYPES = 'test/fixtures/mindspore/cases/dtypes/expected/merged.safetensors';
// MindSpore's crc_check of safetensors calls bytes() on every numpy array, which fails for bf16
// ("cannot include dtype 'E' in a buffer"), so the CRC'd safetensors case uses a bf16-free source.
const NO_BF16 = 'test/fixtures/mindspore/cases/safetensors/expected/merged.safetensors';

let dir: string;
beforeAll(async () => {
  await ensurePythonVenv(); // fails loudly when the MindSpore venv cannot be built
  dir = await mkdtemp(join(tmpdir(), 'writer-ms-'));
}, 30 * 60_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Copy every tensor of `from` into a new file of `format`, in pieces of 5 bytes, back to front. */
async function writeFrom(from: string, file: string, format: CheckpointFormat, opts: TensorFileWriterOptions) {
  const src = await indexSafetensors(await openLocalSource(from));
  const specs = [...src.tensors.values()].map((e) => ({ name: e.name, dtype: e.dtype, shape: e.shape }));
  const w = await createTensorFileWriter(file, format, specs, opts);
  for (const e of [...src.tensors.values()].reverse()) {
    const bytes = await readTensorBytes(src, e, 0, e.byteLength);
    for (let o = Math.floor((bytes.length - 1) / 5) * 5; o >= 0; o -= 5) await w.writeAt(e.name, o, bytes.subarray(o, o + 5));
  }
  await w.commit();
  await src.source.close();
}

async function checkLoad(file: string, expected: string): Promise<Record<string, unknown>> {
  const { stdout } = await runPython(CHECK_LOAD, [file, expected], { timeoutMs: 180_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!);
}

describe('files from createTensorFileWriter load in real MindSpore', () => {
  it.each([
    { name: '.ckpt without CRC, with a str value', from: DTYPES, tensors: 13, file: 'plain.ckpt', format: 'mindspore-ckpt' as const, opts: { strings: [{ name: 'model_name', value: 'tiny-net-é' }] }, crc: false },
    { name: '.ckpt with the crc_num trailer, tensors split into 16-byte records', from: DTYPES, tensors: 13, file: 'crc.ckpt', format: 'mindspore-ckpt' as const, opts: { crc: true, ckptChunkBytes: 16 }, crc: true },
    { name: 'safetensors with every dtype (bf16 too)', from: DTYPES, tensors: 13, file: 'all.safetensors', format: 'safetensors' as const, opts: { metadata: { format: 'ms' } }, crc: false },
    { name: 'safetensors with format=ms and crc_num (int64 scalar included)', from: NO_BF16, tensors: 3, file: 'crc.safetensors', format: 'safetensors' as const, opts: { crc: true, metadata: { format: 'ms' } }, crc: true },
  ])('$name', async ({ from, tensors, file, format, opts, crc }) => {
    const path = join(dir, file);
    await writeFrom(from, path, format, opts);
    const report = await checkLoad(path, from);
    expect(report).toMatchObject({ ok: true, crcChecked: crc, mismatches: [], missing: [], extra: [], tensors });
    if (opts.strings) expect(report.strings).toEqual({ model_name: 'tiny-net-é' });
  }, 300_000);

  it('a zero-element tensor (MindSpore ≥2 writes no record for it; we write an empty one) loads too', async () => {
    const path = join(dir, 'zero.ckpt');
    const w = await createTensorFileWriter(path, 'mindspore-ckpt', [{ name: 'empty', dtype: 'F32', shape: [0, 4] }, { name: 'b', dtype: 'F32', shape: [3] }]);
    const src = await indexSafetensors(await openLocalSource(NO_BF16));
    await w.writeAt('b', 0, await readTensorBytes(src, src.tensors.get('b')!, 0, 12));
    await w.commit();
    const only = join(dir, 'b.safetensors');
    const e = await createTensorFileWriter(only, 'safetensors', [{ name: 'b', dtype: 'F32', shape: [3] }]);
    await e.writeAt('b', 0, await readTensorBytes(src, src.tensors.get('b')!, 0, 12));
    await e.commit();
    const { stdout } = await runPython(CHECK_LOAD, [path, only, '--allow-extra'], { timeoutMs: 180_000 });
    expect(JSON.parse(stdout.trim().split('\n').pop()!)).toMatchObject({ ok: true, extra: ['empty'], tensors: 1 });
  }, 300_000);
});
