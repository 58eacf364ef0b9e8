import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mlpNetwork } from '../../core/onnx/sample-networks.js';
import { fixtureConfig, servesExactly, writeSafetensors, writeServeFixture } from './serve-fixture.js';
import { freePortBlock, freePorts } from '../harness/ports.js';
import { RANK_NODE_FLAGS } from '../../runtime-image/node-flags.js';
import { buildImageTree, IMAGE_PATHS, INSTALL_PATHS } from '../harness/image-tree.js';

// The container entrypoint (`shardserve rank` with the pod environment) and the image definition.
const ROOT = join(import.meta.dirname, '..', '..');
const children: ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
});

/** The image's `shardserve` command (the Dockerfile links it to /usr/local/bin/shardserve). */
const LAUNCHER_TEXT = readFileSync(join(ROOT, 'runtime-image', 'launcher.sh'), 'utf8');

/** That command, aimed at this checkout instead of /app: what the entrypoint runs. */
function launcherIn(dir: string, app = ROOT): string {
  const path = join(dir, 'shardserve');
  writeFileSync(path, LAUNCHER_TEXT.replaceAll('/app/bin/shardserve.mjs', join(app, 'bin', 'shardserve.mjs')));
  chmodSync(path, 0o755);
  return path;
}
const LAUNCHER = launcherIn(mkdtempSync(join(tmpdir(), 'launcher-')));

function runCli(args: string[], env: NodeJS.ProcessEnv, launcher = LAUNCHER) {
  const PATH = `${dirname(process.execPath)}:${process.env.PATH ?? ''}`;
  const child = spawn(launcher, args, { env: { ...process.env, PATH, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, exited, output: () => output };
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (await check().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('runtime-image/Dockerfile', () => {
  const text = readFileSync(join(ROOT, 'runtime-image', 'Dockerfile'), 'utf8');
  const final = text.slice(text.lastIndexOf('\nFROM '));
  it('runs as a numeric non-root user in the final stage', () => {
    const user = /^USER\s+(\S+)/m.exec(final)?.[1];
    expect(user).toMatch(/^[1-9]\d*(:\d+)?$/);
  });
  it('has `shardserve rank` as its entrypoint and a small Node 20 base', () => {
    expect(/^ENTRYPOINT\s+(.*)$/m.exec(final)?.[1]).toBe('["shardserve", "rank"]');
    expect(final).toMatch(/^FROM node:20-[a-z-]*slim/m);
    expect(text).toMatch(/npm ci --omit=dev/);
  });
  it('compiles the product in a build stage and runs the compiled tree (what test/harness/image-tree.ts makes)', () => {
    const build = text.slice(text.indexOf('AS build\n'), text.lastIndexOf('\nFROM '));
    const copied = [...build.matchAll(/^COPY (\S+(?: \S+)*) \.\/(\S*)$/gm)].flatMap((m) => m[1].split(' '));
    expect(copied).toEqual([...INSTALL_PATHS, ...IMAGE_PATHS]);
    expect(build).toMatch(/^RUN npm ci\nCOPY tsconfig\.json/m);
    expect(build).toMatch(/^RUN npx tsc -p tsconfig\.build\.json$/m);
    // The final stage takes every product path from the build stage (compiled JavaScript next to each source).
    const fromBuild = [...final.matchAll(/^COPY --from=build \/app\/(\S+) \.\/(\S+)$/gm)].map((m) => [m[1], m[2]]);
    expect(fromBuild).toEqual(IMAGE_PATHS.filter((p) => !p.startsWith('tsconfig')).map((p) => [p, p]));
    expect(final).toMatch(/^COPY --from=deps \/app\/node_modules \.\/node_modules$/m);
  });
  it('installs runtime-image/launcher.sh as the `shardserve` command', () => {
    expect(final).toMatch(/^RUN ln -s \/app\/runtime-image\/launcher\.sh \/usr\/local\/bin\/shardserve && chmod 0755 \/app\/runtime-image\/launcher\.sh$/m);
  });
  it('has `shardserve rank` exec node with the rank\'s V8 flags (as `shardserve up` does), every other command without them', () => {
    // A `node` that prints the arguments it was given, ahead of the real one on PATH.
    const dir = mkdtempSync(join(tmpdir(), 'launcher-args-'));
    writeFileSync(join(dir, 'node'), '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n');
    chmodSync(join(dir, 'node'), 0o755);
    const launcher = launcherIn(dir);
    const argv = (...args: string[]) => execFileSync(launcher, args, { env: { ...process.env, PATH: `${dir}:${process.env.PATH ?? ''}` }, encoding: 'utf8' }).trimEnd().split('\n');
    const cli = join(ROOT, 'bin', 'shardserve.mjs');
    expect(argv('rank')).toEqual([...RANK_NODE_FLAGS, cli, 'rank']);
    expect(argv('operator', '--namespace', 'a b')).toEqual([cli, 'operator', '--namespace', 'a b']);
    expect(argv()).toEqual([cli]);
  });
  it('keeps every write under /tmp (read-only root filesystem)', () => {
    expect(final).toMatch(/TMPDIR=\/tmp/);
    expect(final).toMatch(/HOME=\/tmp/);
  });
});

/** Environment variables under which onnxruntime suppresses its telemetry by itself (CI services). */
const ORT_CI_MARKERS = ['GITHUB_ACTIONS', 'TF_BUILD', 'JENKINS_URL', 'GITLAB_CI', 'TRAVIS', 'CIRCLECI', 'BUILDKITE', 'TEAMCITY_VERSION'];

/**
 * `shardserve rank` through `launcher` (the image's command aimed at `app`): loads, serves the OIP
 * front door with the merged model's exact outputs, and drains on SIGTERM. TMPDIR and HOME are an
 * empty directory; with `noWrites` it must still be empty afterwards (what a read-only root
 * filesystem needs; checked this way because tests may run as root, whom permissions do not stop).
 */
async function servesAndDrains(launcher: string, app: string, noWrites: boolean): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'rank-entry-'));
  const home = mkdtempSync(join(tmpdir(), 'rank-home-'));
  const net = mlpNetwork();
  const fixture = writeServeFixture(join(dir, 'fixture'), net, 1);
  const [grpc, http] = await freePorts(2);
  const rank = await freePortBlock(1);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(fixtureConfig(fixture, { grpc, http, rank })));
  const proc = runCli(['rank'], {
    SHARDSERVE_RANK: '0', SHARDSERVE_GROUP: '0', SHARDSERVE_WORLD_SIZE: '1', SHARDSERVE_PIPELINE_STAGES: '1', SHARDSERVE_TENSOR_PARALLEL: '1',
    SHARDSERVE_PEERS: '127.0.0.1:{port}', SHARDSERVE_CONFIG: join(dir, 'config.json'), SHARDSERVE_BIND_HOST: '127.0.0.1',
    TMPDIR: home, HOME: home,
    // Neither the suites' own telemetry setting nor a CI marker (onnxruntime stays quiet under those):
    // the rank's default alone decides.
    ORT_DISABLE_TELEMETRY: undefined, ...Object.fromEntries(ORT_CI_MARKERS.map((k) => [k, undefined])),
  }, launcher);
  await waitFor('/readyz', async () => (await fetch(`http://127.0.0.1:${http}/readyz`)).status === 200, 60_000);
  // The launcher exec'd node: the process that serves is the one the container runtime signals.
  const argv = readFileSync(`/proc/${proc.child.pid}/cmdline`, 'utf8').split('\0').filter(Boolean);
  expect(argv.slice(1)).toEqual([...RANK_NODE_FLAGS, join(app, 'bin', 'shardserve.mjs'), 'rank']);
  expect(await servesExactly(`127.0.0.1:${grpc}`, 'net', net)).toBe(true);
  proc.child.kill('SIGTERM');
  expect(await proc.exited).toBe(0);
  expect(proc.output()).toMatch(/rank 0: draining \(received SIGTERM\)/);
  // Nothing in HOME or TMPDIR but, through tsx, its transpile cache: no onnxruntime telemetry files
  // (a device id under .cache/Microsoft, .ses, mat-debug-*.log), which it writes unless turned off.
  const written = readdirSync(home, { encoding: 'utf8' });
  expect(noWrites ? written : written.filter((f) => !f.startsWith('tsx-'))).toEqual([]);
}

describe('the image\'s compiled tree (runtime-image/Dockerfile\'s build stage, made by test/harness/image-tree.ts)', () => {
  let tree = '';
  beforeAll(() => {
    tree = buildImageTree(join(mkdtempSync(join(tmpdir(), 'image-tree-')), 'app'));
  }, 200_000);

  it('has JavaScript next to every product source, and runs commands with neither tsx nor esbuild installed', () => {
    const sources = (dir: string): string[] => readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.ts'));
    for (const top of ['core', 'cli', 'runtime-image', 'operator']) {
      const ts = sources(join(tree, top)).filter((f) => f !== join('layout', 'test-builders.ts'));
      expect(ts.length).toBeGreaterThan(0);
      expect(ts.filter((f) => !existsSync(join(tree, top, f.replace(/\.ts$/, '.js')))), top).toEqual([]);
    }
    // Production's packages only, and neither tsx nor esbuild.
    for (const absent of ['tsx', 'esbuild', 'vitest', 'typescript']) expect(existsSync(join(tree, 'node_modules', absent)), absent).toBe(false);
    expect(existsSync(join(tree, 'node_modules', 'onnxruntime-node'))).toBe(true);
    const out = execFileSync(process.execPath, [join(tree, 'bin', 'shardserve.mjs'), '--version'], { encoding: 'utf8' });
    expect(out.trim()).toBe(`shardserve ${JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version}`);
  });

  it('serves as `shardserve rank` and writes nothing (no transpile cache): exact outputs, drains on SIGTERM', async () => {
    await servesAndDrains(launcherIn(mkdtempSync(join(tmpdir(), 'launcher-')), tree), tree, true);
  }, 90_000);
});

describe('shardserve rank (the entrypoint command) with the pod environment', () => {
  it('loads, serves the OIP front door with the merged model\'s exact outputs, and drains on SIGTERM (sources through tsx)', async () => {
    await servesAndDrains(LAUNCHER, ROOT, false);
  }, 90_000);

  it('writes a stage-count mismatch to the termination log and exits 1', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rank-entry-'));
    const fixture = writeServeFixture(join(dir, 'fixture'), mlpNetwork(), 4);
    const [grpc, http] = await freePorts(2);
    const rank = await freePortBlock(2);
    const config = { ...fixtureConfig(fixture, { grpc, http, rank }), parallelism: { pipelineStages: 2, tensorParallel: 1 } };
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    const log = join(dir, 'termination-log');
    const proc = runCli(['rank'], {
      SHARDSERVE_RANK: '1', SHARDSERVE_WORLD_SIZE: '2', SHARDSERVE_PIPELINE_STAGES: '2', SHARDSERVE_TENSOR_PARALLEL: '1',
      SHARDSERVE_PEERS: '127.0.0.1:{port}', SHARDSERVE_CONFIG: join(dir, 'config.json'), SHARDSERVE_BIND_HOST: '127.0.0.1',
      SHARDSERVE_TERMINATION_LOG: log,
    });
    expect(await proc.exited).toBe(1);
    expect(readFileSync(log, 'utf8').trim()).toBe('strategy has 4 stages, spec asks for 2');
    expect(proc.output()).toMatch(/shardserve rank: strategy has 4 stages, spec asks for 2/);
  }, 60_000);

  const loadCases: Array<[string, (f: ReturnType<typeof writeServeFixture>, dir: string) => object, RegExp, number?]> = [
    ['a cut tensor the graph does not have', (f) => ({ model: { uri: f.model, cutTensors: ['no_such_tensor'] }, parallelism: { pipelineStages: 2, tensorParallel: 1 } }),
      /cut tensor 'no_such_tensor' \(boundary 0\) is not a tensor of the graph/, 2],
    ['a checkpoint without a weight the stage needs', (f) => {
      // Rewrite rank 0's file without layers.0.bias: the checkpoint no longer holds it.
      const net = mlpNetwork();
      const w = [...net.weights].filter(([n]) => n !== 'layers.0.bias' && n.startsWith('layers.0'));
      writeSafetensors(join(f.checkpoint, 'rank_0', 'model.safetensors'), w);
      return {};
    }, /layers\.0\.bias/],
  ];
  for (const [name, change, message, stages = 1] of loadCases) {
    it(`refuses ${name} before serving (termination log names it)`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'rank-entry-'));
      const fixture = writeServeFixture(join(dir, 'fixture'), mlpNetwork(), 1);
      const [grpc, http] = await freePorts(2);
      const rank = await freePortBlock(stages);
      writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...fixtureConfig(fixture, { grpc, http, rank }), ...change(fixture, dir) }));
      const log = join(dir, 'termination-log');
      const proc = runCli(['rank'], {
        SHARDSERVE_RANK: '0', SHARDSERVE_WORLD_SIZE: String(stages), SHARDSERVE_PIPELINE_STAGES: String(stages), SHARDSERVE_TENSOR_PARALLEL: '1',
        SHARDSERVE_PEERS: '127.0.0.1:{port}', SHARDSERVE_CONFIG: join(dir, 'config.json'), SHARDSERVE_BIND_HOST: '127.0.0.1',
        SHARDSERVE_TERMINATION_LOG: log,
      });
      expect(await proc.exited).toBe(1);
      expect(readFileSync(log, 'utf8')).toMatch(message);
      expect(proc.output()).not.toMatch(/READY/);
    }, 60_000);
  }

  const envCases: Array<[string, NodeJS.ProcessEnv, RegExp]> = [
    ['tensor parallel > 1', { SHARDSERVE_WORLD_SIZE: '2', SHARDSERVE_PIPELINE_STAGES: '1', SHARDSERVE_TENSOR_PARALLEL: '2' }, /SHARDSERVE_TENSOR_PARALLEL=2: tensor-parallel stages are not supported yet \(expected 1\)/],
    ['a world that is not stages × tp', { SHARDSERVE_WORLD_SIZE: '3', SHARDSERVE_PIPELINE_STAGES: '2', SHARDSERVE_TENSOR_PARALLEL: '1' }, /SHARDSERVE_WORLD_SIZE=3 must equal SHARDSERVE_PIPELINE_STAGES \(2\) × SHARDSERVE_TENSOR_PARALLEL \(1\)/],
    ['a rank outside the world', { SHARDSERVE_RANK: '5' }, /SHARDSERVE_RANK=5 is outside the world of 2 ranks/],
    ['no configuration path', { SHARDSERVE_CONFIG: '' }, /SHARDSERVE_CONFIG is not set/],
    ['a missing configuration file', { SHARDSERVE_CONFIG: '/nonexistent/config.json' }, /\/nonexistent\/config.json: cannot read the rank configuration/],
  ];
  for (const [name, env, message] of envCases) {
    it(`refuses ${name} with a one-line error`, async () => {
      const proc = runCli(['rank'], {
        SHARDSERVE_RANK: '0', SHARDSERVE_WORLD_SIZE: '2', SHARDSERVE_PIPELINE_STAGES: '2', SHARDSERVE_TENSOR_PARALLEL: '1',
        SHARDSERVE_PEERS: '127.0.0.1:{port}', SHARDSERVE_CONFIG: '/nonexistent/config.json', ...env,
      });
      expect(await proc.exited).not.toBe(0);
      expect(proc.output().trim().split('\n').filter((l) => !l.startsWith('npm warn'))).toEqual([expect.stringMatching(message)]);
    }, 30_000);
  }
});
