// npm run bench:rank-load [-- --repeats 3]
//
// A rank's start, as a pod runs it: `shardserve rank` (with the rank's node flags) from an exported
// model that carries all its weights (256 MiB of the MLP below) and a sharded checkpoint, until it
// logs its stage loaded (session created). Measured per run: that time from spawn, the rank's own
// "loaded in" figure, its peak resident memory (VmHWM), its resident memory 1.5 s later, and the
// bytes it read (rchar); for the whole model on 1 stage and for each rank of 2 stages. Each run is
// done twice, in turns: from the sources through tsx (a checkout) and from the compiled tree the
// image's build stage makes (test/harness/image-tree.ts: plain JavaScript, no loader). Writes
// bench/results/rank-load.json.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { mlpNetwork } from '../core/onnx/sample-networks.js';
import { RANK_NODE_FLAGS } from '../runtime-image/node-flags.js';
import { freePort, freePortRange } from '../runtime-image/ports.js';
import { cacheDir } from '../test/harness/cache.js';
import { buildImageTree } from '../test/harness/image-tree.js';
import { fixtureConfig, type ServeFixture, writeServeFixture } from '../test/integration/serve-fixture.js';

const here = dirname(fileURLToPath(import.meta.url));
const WIDTH = 4096;
const WIDTHS = [16, WIDTH, WIDTH, WIDTH, WIDTH, WIDTH, 16];

function fixtureFor(stages: number): ServeFixture {
  const dir = cacheDir('bench-rank-load', `mlp-${WIDTHS.join('x')}-${stages}stages-v1`);
  const marker = join(dir, 'fixture.json');
  if (existsSync(marker)) return JSON.parse(readFileSync(marker, 'utf8'));
  process.stderr.write(`bench:rank-load: writing the ${stages}-stage fixture to ${dir} (once) ...\n`);
  const f = writeServeFixture(join(dir, 'f'), mlpNetwork(WIDTHS), stages);
  writeFileSync(marker, JSON.stringify(f));
  return f;
}

const procField = (pid: number, file: string, re: RegExp) => Number(re.exec(readFileSync(`/proc/${pid}/${file}`, 'utf8'))?.[1] ?? NaN);

interface Run { readyMs: number; loadedMs: number; peakRssBytes: number; rssReadyBytes: number; bytesRead: number; sliceBytes: number }

async function startGroupRank(f: ServeFixture, rank: number, stages: number, dir: string, app: string): Promise<Run> {
  const ports = { grpc: await freePort(), http: await freePort(), rank: await freePortRange(stages) };
  const configPath = join(dir, `config-${rank}.json`);
  writeFileSync(configPath, JSON.stringify(fixtureConfig(f, ports, 'net')));
  const t0 = performance.now();
  // The rank under test is the only one started: it loads whether its next stage is up or not.
  const child = spawn(process.execPath, [...RANK_NODE_FLAGS, join(app, 'bin', 'shardserve.mjs'), 'rank'], {
    env: {
      ...process.env, SHARDSERVE_RANK: String(rank), SHARDSERVE_GROUP: '0', SHARDSERVE_WORLD_SIZE: String(stages), SHARDSERVE_PIPELINE_STAGES: String(stages),
      SHARDSERVE_TENSOR_PARALLEL: '1', SHARDSERVE_PEERS: '127.0.0.1:{port}', SHARDSERVE_CONFIG: configPath, SHARDSERVE_BIND_HOST: '127.0.0.1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stdout!.on('data', (d) => (log += d));
  child.stderr!.on('data', (d) => (log += d));
  try {
    const deadline = Date.now() + 120_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`rank ${rank} exited ${child.exitCode}: ${log.trim().split('\n').slice(-3).join(' | ')}`);
      if (Date.now() > deadline) throw new Error(`rank ${rank} not loaded within 120 s: ${log.trim().split('\n').slice(-3).join(' | ')}`);
      const loaded = /stage \d+ loaded in (\d+) ms \((\d+) bytes/.exec(log);
      if (loaded) {
        const readyMs = performance.now() - t0;
        await new Promise((r) => setTimeout(r, 1500));
        return {
          readyMs,
          loadedMs: Number(loaded[1]),
          sliceBytes: Number(loaded[2]),
          peakRssBytes: procField(child.pid!, 'status', /VmHWM:\s+(\d+) kB/) * 1024,
          rssReadyBytes: procField(child.pid!, 'status', /VmRSS:\s+(\d+) kB/) * 1024,
          bytesRead: procField(child.pid!, 'io', /^rchar:\s+(\d+)/m),
        };
      }
      await new Promise((r) => setTimeout(r, 25));
    }
  } finally {
    child.kill('SIGTERM');
    await new Promise((r) => (child.exitCode !== null ? r(undefined) : child.once('exit', r)));
  }
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const { values } = parseArgs({ options: { repeats: { type: 'string', default: '3' } } });
const repeats = Number(values.repeats);
process.stderr.write('bench:rank-load: compiling the image\'s tree (tsc -p tsconfig.build.json) ...\n');
const treeParent = mkdtempSync(join(tmpdir(), 'bench-rank-load-'));
const entries = { tsx: join(here, '..'), compiled: buildImageTree(join(treeParent, 'app')) };
const results: Record<string, unknown>[] = [];
for (const stages of [1, 2]) {
  const f = fixtureFor(stages);
  const modelBytes = statSync(f.model).size;
  for (let rank = 0; rank < stages; rank++) {
    const runs: Record<keyof typeof entries, Run[]> = { tsx: [], compiled: [] };
    for (let i = 0; i < repeats; i++) {
      for (const entry of (i % 2 === 0 ? ['tsx', 'compiled'] : ['compiled', 'tsx']) as (keyof typeof entries)[]) {
        const r = await startGroupRank(f, rank, stages, dirname(f.model), entries[entry]);
        process.stderr.write(`bench:rank-load: ${stages} stage(s), rank ${rank}, ${entry} #${i + 1}: loaded in ${r.loadedMs} ms, ready after ${r.readyMs.toFixed(0)} ms, peak ${(r.peakRssBytes / 2 ** 20).toFixed(0)} MiB, ${(r.rssReadyBytes / 2 ** 20).toFixed(0)} MiB once ready, read ${(r.bytesRead / 2 ** 20).toFixed(0)} MiB\n`);
        runs[entry].push(r);
      }
    }
    const summary = (rs: Run[]) => {
      const m = (k: keyof Run) => median(rs.map((r) => r[k]));
      return {
        loadedMs: m('loadedMs'), readyMs: m('readyMs'), peakRssBytes: m('peakRssBytes'), rssReadyBytes: m('rssReadyBytes'), bytesRead: m('bytesRead'),
        peakOverSlice: m('peakRssBytes') / rs[0].sliceBytes, bytesReadOverSlice: m('bytesRead') / rs[0].sliceBytes,
        runs: rs,
      };
    };
    const tsx = summary(runs.tsx);
    const compiled = summary(runs.compiled);
    results.push({ stages, rank, modelBytes, sliceBytes: runs.tsx[0].sliceBytes, tsx, compiled, readyMsSavedCompiled: tsx.readyMs - compiled.readyMs });
  }
}
rmSync(treeParent, { recursive: true, force: true });
mkdirSync(join(here, 'results'), { recursive: true });
const out = {
  command: 'npm run bench:rank-load',
  date: new Date().toISOString(),
  machine: { cpus: (await import('node:os')).cpus().length, node: process.version },
  model: `MLP ${WIDTHS.join('-')} (F32), exported with all its weights; MindSpore-style pipeline strategy, one device per stage`,
  method: `\`shardserve rank\` with the rank's node flags, alone; medians of ${repeats} runs, each from the sources through tsx and from the compiled tree the image's build makes, in turns. loadedMs: the rank's own figure (config to session); readyMs: spawn to that log line; bytesRead: the process's rchar (node and its modules included); rssReady: VmRSS 1.5 s after loaded`,
  results,
};
writeFileSync(join(here, 'results', 'rank-load.json'), JSON.stringify(out, null, 2) + '\n');
const brief = (s: any) => ({ readyMs: Math.round(s.readyMs), loadedMs: s.loadedMs, peakMiB: Math.round(s.peakRssBytes / 2 ** 20), readyMiB: Math.round(s.rssReadyBytes / 2 ** 20) });
process.stdout.write(JSON.stringify(results.map((r: any) => ({ stages: r.stages, rank: r.rank, tsx: brief(r.tsx), compiled: brief(r.compiled), readyMsSavedCompiled: Math.round(r.readyMsSavedCompiled) })), null, 2) + '\n');
