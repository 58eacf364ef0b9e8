import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parseOnnx, serializeOnnx } from '../../core/onnx/model.js';
import { mlpNetwork } from '../../core/onnx/sample-networks.js';
import { RANK_NODE_FLAGS } from '../../runtime-image/node-flags.js';
import { encryptServeFixture, servesExactly, writeServeFixture } from './serve-fixture.js';
import { freePortBlock, freePorts } from '../harness/ports.js';

// `npm start` (shardserve demo) and `shardserve up` as a user runs them.
const ROOT = join(import.meta.dirname, '..', '..');

const children: ReturnType<typeof spawn>[] = [];
// A failed assertion must not leave `up` (and its ranks) running: SIGTERM stops them all.
afterAll(async () => {
  await Promise.all(children.filter((c) => c.exitCode === null && c.signalCode === null).map((c) => new Promise((resolve) => {
    c.once('exit', resolve);
    c.kill('SIGTERM');
  })));
});

function cli(args: string[], timeoutMs: number) {
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'shardserve.mjs'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGTERM'), timeoutMs);
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => {
    clearTimeout(timer);
    resolve(code);
  }));
  return { child, exited, stdout: () => stdout, stderr: () => stderr };
}

describe('shardserve demo (npm start)', () => {
  it('serves examples/ on 2 stages, prints the prediction and that it equals single-device onnxruntime bitwise, exits 0 and leaves no rank behind', async () => {
    const run = cli(['demo', '--deadline', '120'], 150_000);
    expect(await run.exited).toBe(0);
    const out = run.stdout();
    expect(out).toMatch(/^prediction \(13\): \[2\.751405, -2\.655039, .*\]$/m);
    expect(out).toMatch(/^predicted class: 0 /m);
    expect(out).toMatch(/^equals single-device onnxruntime on the merged model: yes \(bitwise\)$/m);
    expect(out).toMatch(/rank 0: stopped/);
    expect(out).toMatch(/rank 1: stopped/);
  }, 160_000);
});

describe('shardserve up', () => {
  it('refuses a stage count that does not match the strategy before starting any rank', async () => {
    const f = writeServeFixture(mkdtempSync(join(tmpdir(), 'up-')), mlpNetwork(), 4);
    const run = cli(['up', '--model', f.model, '--checkpoint', f.checkpoint, '--strategy', f.strategy, '--stages', '2'], 60_000);
    expect(await run.exited).toBe(1);
    expect(run.stderr().trim().split('\n').filter((l) => !l.startsWith('npm warn'))).toEqual([`shardserve up: strategy has 4 stages, spec asks for 2 (${f.strategy})`]);
  }, 60_000);

  it('refuses tensor parallel > 1 and missing flags with one-line errors', async () => {
    const a = cli(['up', '--model', 'm.onnx', '--checkpoint', 'c', '--strategy', 's', '--tp', '2', '--stages', '1'], 30_000);
    const b = cli(['up', '--model', 'm.onnx', '--strategy', 's'], 30_000);
    expect(await b.exited).toBe(2);
    expect(b.stderr()).toMatch(/^shardserve up: --checkpoint is required$/m);
    expect(await a.exited).toBe(1);
    expect(a.stderr()).toMatch(/^shardserve up: --tp 2: tensor-parallel stages are not supported yet \(expected 1\)$/m);
  }, 60_000);

  it('shows each rank loading, serves, and on SIGTERM drains and stops every rank (exit 0)', async () => {
    const f = writeServeFixture(mkdtempSync(join(tmpdir(), 'up-')), mlpNetwork(), 2);
    const [grpc, http] = await freePorts(2);
    const rankPort = await freePortBlock(2);
    const run = cli(['up', '--model', f.model, '--checkpoint', f.checkpoint, '--strategy', f.strategy, '--port', String(grpc), '--http-port', String(http), '--rank-port', String(rankPort), '--name', 'mlp'], 120_000);
    const until = Date.now() + 90_000;
    while (!/serving model 'mlp' on 2 stage\(s\)/.test(run.stderr())) {
      if (Date.now() > until || run.child.exitCode !== null) throw new Error(run.stderr());
      await new Promise((r) => setTimeout(r, 100));
    }
    expect((await fetch(`http://127.0.0.1:${http}/v2/models/mlp/ready`)).status).toBe(200);
    expect(run.stderr()).toMatch(/rank 0 +READY +\[#{20}\]/);
    expect(run.stderr()).toMatch(/rank 1 +READY +\[#{20}\]/);
    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
    expect(run.stderr()).toMatch(/\[rank 0\] rank 0: draining \(received SIGTERM\)/);
    expect(run.stderr()).toMatch(/\[rank 1\] rank 1: stopped/);
    await expect(fetch(`http://127.0.0.1:${http}/readyz`)).rejects.toThrow();
  }, 120_000);

  /** `up` of fixture `f` on free ports with `extra` flags, once it says it serves `name`. */
  async function upServing(f: { model: string; checkpoint: string; strategy: string }, name: string, extra: string[]) {
    const [grpc, http] = await freePorts(2);
    const rankPort = await freePortBlock(2);
    const run = cli(['up', '--model', f.model, '--checkpoint', f.checkpoint, '--strategy', f.strategy, '--port', String(grpc), '--http-port', String(http), '--rank-port', String(rankPort), '--name', name, ...extra], 120_000);
    const until = Date.now() + 90_000;
    while (!new RegExp(`serving model '${name}' on`).test(run.stderr())) {
      if (Date.now() > until || run.child.exitCode !== null) throw new Error(run.stderr());
      await new Promise((r) => setTimeout(r, 100));
    }
    return { run, grpc: `127.0.0.1:${grpc}` };
  }

  it('serves an encrypted .ckpt checkpoint with --key-file (a hex key) and --dec-mode: exact outputs', async () => {
    const net = mlpNetwork();
    const f = writeServeFixture(mkdtempSync(join(tmpdir(), 'up-enc-')), net, 2);
    const key = Buffer.from('0f0e0d0c0b0a09080706050403020100', 'hex');
    await encryptServeFixture(f, net, key, 'SM4-CBC');
    const keyFile = join(f.dir, 'ckpt.key');
    writeFileSync(keyFile, key.toString('hex') + '\n');
    const { run, grpc } = await upServing(f, 'enc', ['--key-file', keyFile, '--dec-mode', 'SM4-CBC']);
    expect(await servesExactly(grpc, 'enc', net, 3)).toBe(true);
    // The key itself is on no command line: each rank was given the file's path in its configuration.
    for (const pid of execFileSync('pgrep', ['-P', String(run.child.pid)], { encoding: 'utf8' }).trim().split('\n').map(Number)) {
      expect(readFileSync(`/proc/${pid}/cmdline`, 'utf8')).not.toContain(key.toString('hex'));
    }
    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
  }, 120_000);

  it('serves a model whose initializer names differ from the checkpoint\'s, given --parameter-names', async () => {
    const net = mlpNetwork();
    const f = writeServeFixture(mkdtempSync(join(tmpdir(), 'up-names-')), net, 2);
    // The ONNX graph calls two weights (one a stage) by other names than the checkpoint does.
    const renames: Record<string, string> = { 'layers.0.weight': 'encoder.dense.kernel', 'layers.1.bias': 'decoder.dense.b' };
    const model = parseOnnx(readFileSync(f.model));
    for (const init of model.graph!.initializer!) init.name = renames[init.name!] ?? init.name;
    for (const node of model.graph!.node!) node.input = node.input!.map((i) => renames[i] ?? i);
    writeFileSync(f.model, serializeOnnx(model));
    const map = join(f.dir, 'names.json');
    writeFileSync(map, JSON.stringify(renames));
    const { run, grpc } = await upServing(f, 'renamed', ['--parameter-names', map]);
    expect(await servesExactly(grpc, 'renamed', net)).toBe(true);
    run.child.kill('SIGTERM');
    expect(await run.exited).toBe(0);
  }, 120_000);

  it.each([
    ['a rename map that is not JSON, as a usage error', '--parameter-names', '{nope', 2, (f: string) => `${f}: --parameter-names must be a JSON file {"checkpoint name": "initializer name"} (`],
    ['a key file of the wrong size', '--key-file', 'abc', 1, (f: string) => `${f}: key must be 16, 24 or 32 raw bytes or as many bytes in hex, got 3 bytes\n`],
  ])('refuses %s before starting any rank', async (_what, flag, content, code, message) => {
    const file = join(mkdtempSync(join(tmpdir(), 'up-badfile-')), 'given');
    writeFileSync(file, content);
    const run = cli(['up', '--model', 'm.onnx', '--checkpoint', 'c', '--strategy', 's', flag, file], 30_000);
    expect(await run.exited).toBe(code);
    expect(run.stderr().startsWith(`shardserve up: ${message(file)}`)).toBe(true);
  }, 30_000);

  it('takes its ranks down with it when it is killed outright (no orphaned ranks)', async () => {
    const f = writeServeFixture(mkdtempSync(join(tmpdir(), 'up-')), mlpNetwork(), 2);
    const [grpc, http] = await freePorts(2);
    const rankPort = await freePortBlock(2);
    const run = cli(['up', '--model', f.model, '--checkpoint', f.checkpoint, '--strategy', f.strategy, '--port', String(grpc), '--http-port', String(http), '--rank-port', String(rankPort)], 120_000);
    const until = Date.now() + 90_000;
    while (!/serving model/.test(run.stderr())) {
      if (Date.now() > until || run.child.exitCode !== null) throw new Error(run.stderr());
      await new Promise((r) => setTimeout(r, 100));
    }
    const ranks = execFileSync('pgrep', ['-P', String(run.child.pid)], { encoding: 'utf8' }).trim().split('\n').map(Number);
    expect(ranks.length).toBeGreaterThanOrEqual(2);
    // Each rank runs `shardserve rank` under node with the rank's V8 flags (runtime-image/node-flags.ts).
    for (const pid of ranks) {
      const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
      expect(argv.slice(1, 1 + RANK_NODE_FLAGS.length)).toEqual(RANK_NODE_FLAGS);
      expect(argv.slice(-2)).toEqual([join(ROOT, 'bin', 'shardserve.mjs'), 'rank']);
    }
    run.child.kill('SIGKILL');
    const alive = () => ranks.filter((pid) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    });
    const deadline = Date.now() + 15_000;
    while (alive().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(alive()).toEqual([]);
  }, 120_000);
});
