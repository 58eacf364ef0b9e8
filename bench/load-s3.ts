// npm run bench:load:s3 [-- --params 16 --rows 2048 --cols 1024 --records 2000 --repeats 5]
//
// One destination rank loading its slice from a local MinIO (s3://) with loadDestinationSlice, vs
// (a) raw signed ranged GETs of exactly the same requests at the same concurrency (no parsing, no
// copying into tensors), and (b) downloading every file the rank touches whole. Each timed run is one
// child process per contender (interleaved, rotated), timed inside the child after its imports. A sweep over the
// loader's concurrency picks the value used for the comparison. Also measures indexing a .ckpt with
// many records over S3 with and without the shardserve-index.json manifest (round trips, time).
// Writes bench/results/load-s3.json. Loopback only; the server is started and stopped here.
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildManifest, openCheckpointObject, writeManifest } from '../core/checkpoint/open.js';
import { ckptRecord } from '../core/ckpt/record-builder.js';
import { loadDestinationSlice } from '../core/reshard/load.js';
import { planGroups, readRanges } from '../core/storage/ranged-read.js';
import { openS3Storage, S3Client } from '../core/storage/s3.js';
import { strategyToProtobuf } from '../core/strategy/writer.js';
import type { Strategy } from '../core/strategy/types.js';
import { startS3Server } from '../test/harness/minio.js';
import { countingProxy } from '../test/integration/storage-servers.js';

// ---------------------------------------------------------------- child side
// `--child <variant> <json>`: one timed run of one contender in a fresh process (the parent passes the
// server's environment), so no contender inherits another's JIT state, heap or garbage.
type ChildArgs = { C: number; loadOpts: { checkpoint: string; strategy: string; target: { world: number; stages: number; tp: number }; rank: number }; files: { uri: string; ranges: { offset: number; length: number }[] }[]; requests: { key: string; offset: number; length: number }[][] };
async function childRun(variant: string, a: ChildArgs): Promise<void> {
  const rawClient = new S3Client();
  let bytes = 0;
  const t0 = process.hrtime.bigint();
  if (variant === 'loader') {
    // Opening (strategy GET, listing, manifest GET, HEADs), planning, reads, copies into tensors.
    bytes = (await loadDestinationSlice({ ...a.loadOpts, concurrency: a.C })).stats.bytesTransferred;
  } else if (variant === 'readRanges') {
    // The storage layer alone: readRanges over the plan's ranges on the opened sources, sink drops the bytes.
    const st = await openS3Storage('s3://bench/ckpt');
    await Promise.all(a.files.map(async (f) => {
      const src = await st.open(f.uri.replace('s3://bench/ckpt/', ''));
      bytes += (await readRanges(src, f.ranges, { concurrency: a.C }, () => {})).bytesTransferred;
    }));
  } else if (variant === 'raw') {
    await Promise.all(a.requests.map((reqs) => pool(reqs, a.C, async (r) => {
      bytes += (await rawClient.getRange('bench', r.key, `s3://bench/${r.key}`, r.offset, r.length)).length;
    })));
  } else if (variant === 'whole') {
    // Every touched file downloaded in one GET each, in parallel.
    await Promise.all(a.files.map(async (f) => {
      const key = f.uri.replace('s3://bench/', '');
      bytes += (await rawClient.getObject('bench', key, f.uri)).length;
    }));
  } else throw new Error(`unknown variant ${variant}`);
  process.stdout.write(`${JSON.stringify({ ms: Number(process.hrtime.bigint() - t0) / 1e6, bytes })}\n`);
}
const childAt = process.argv.indexOf('--child');
if (childAt >= 0) {
  await childRun(process.argv[childAt + 1], JSON.parse(process.argv[childAt + 2]));
  process.exit(0);
}

const { values: args } = parseArgs({
  options: {
    params: { type: 'string', default: '16' },
    rows: { type: 'string', default: '2048' },
    cols: { type: 'string', default: '1024' },
    records: { type: 'string', default: '2000' },
    repeats: { type: 'string', default: '5' },
    concurrency: { type: 'string', default: '1,2,4,8,16' },
  },
});
const P = Number(args.params);
const ROWS = Number(args.rows);
const COLS = Number(args.cols);
const SRC_RANKS = 4;
const REPEATS = Number(args.repeats);
const SWEEP = args.concurrency!.split(',').map(Number);
const here = dirname(fileURLToPath(import.meta.url));

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

async function pool<T>(items: T[], n: number, fn: (x: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

const work = await mkdtemp(join(tmpdir(), 'ss-bench-s3-'));
const server = await startS3Server({ dataDir: join(work, 'data') });
try {
  const client = server.client();
  await client.createBucket('bench');

  // Source: SRC_RANKS ranks, each parameter [ROWS, COLS] f32 split on columns (tensor map [-1, 0]).
  const strategy: Strategy = { uri: 'bench', stageCount: 1, stageDevices: SRC_RANKS, params: new Map() };
  const names = Array.from({ length: P }, (_, i) => `layer${i}.weight`);
  for (const name of names) {
    strategy.params.set(name, {
      name,
      stages: [0],
      layoutByStage: new Map([[0, { devMatrix: [SRC_RANKS], tensorMap: [-1, 0], paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0 }]]),
    });
  }
  await client.putObject('bench', 'strategy.ckpt', 's3://bench/strategy.ckpt', strategyToProtobuf(strategy));
  const localCols = COLS / SRC_RANKS;
  for (let r = 0; r < SRC_RANKS; r++) {
    const parts = names.map((name, i) => {
      const v = new Float32Array(ROWS * localCols);
      for (let k = 0; k < v.length; k += 97) v[k] = r + i + k;
      return ckptRecord(name, 'float32', [ROWS, localCols], new Uint8Array(v.buffer));
    });
    await client.putObject('bench', `ckpt/rank_${r}/net.ckpt`, `s3://bench/ckpt/rank_${r}/net.ckpt`, Buffer.concat(parts));
  }
  Object.assign(process.env, server.env());
  const ckptStorage = await openS3Storage('s3://bench/ckpt');
  await writeManifest(ckptStorage, await buildManifest(ckptStorage));
  const fileBytes = (await ckptStorage.list()).filter((o) => o.key.endsWith('.ckpt')).reduce((a, o) => a + o.size, 0);

  // Destination: 2-way tensor parallel inference, rank 0.
  const loadOpts = { checkpoint: 's3://bench/ckpt', strategy: 's3://bench/strategy.ckpt', target: { world: 2, stages: 1, tp: 2 }, rank: 0 };
  const sweep: { concurrency: number; ms: number; mbps: number }[] = [];
  let plan: Awaited<ReturnType<typeof loadDestinationSlice>>['plan'] | undefined;
  let stats: Awaited<ReturnType<typeof loadDestinationSlice>>['stats'] | undefined;
  for (const c of SWEEP) {
    const times: number[] = [];
    for (let i = 0; i < REPEATS; i++) {
      const t0 = process.hrtime.bigint();
      const slice = await loadDestinationSlice({ ...loadOpts, concurrency: c });
      times.push(ms(t0));
      plan = slice.plan;
      stats = slice.stats;
    }
    const t = median(times);
    sweep.push({ concurrency: c, ms: t, mbps: stats!.bytesTransferred / 1e6 / (t / 1000) });
    process.stdout.write(`loader concurrency ${c}: ${t.toFixed(0)} ms (${(stats!.bytesTransferred / 1e6 / (t / 1000)).toFixed(0)} MB/s)\n`);
  }
  const best = sweep.reduce((a, b) => (b.ms < a.ms ? b : a));
  const C = best.concurrency;

  // Raw: the same requests the loader makes (its ranges, coalesced with the remote gap, split in
  // 8 MiB parts), C in flight per file, files in parallel; bodies read and dropped.
  const files = plan!.files;
  const requests = files.map((f) => {
    const key = f.uri.replace('s3://bench/', '');
    const groups = planGroups(f.ranges, 64 * 1024, 16 * 1024 * 1024);
    const reqs: { key: string; offset: number; length: number }[] = [];
    for (const g of groups) for (let o = g.offset; o < g.end; o += 8 << 20) reqs.push({ key, offset: o, length: Math.min(8 << 20, g.end - o) });
    return reqs;
  });
  let rawBytes = 0;
  let wholeBytes = 0;
  const tsx = join(here, '..', 'node_modules', '.bin', 'tsx');
  const childArgs: ChildArgs = { C, loadOpts, files: files.map((f) => ({ uri: f.uri, ranges: f.ranges })), requests };
  const runChild = (variant: string) => new Promise<{ ms: number; bytes: number }>((resolve, reject) => {
    const p = spawn(tsx, [fileURLToPath(import.meta.url), '--child', variant, JSON.stringify(childArgs)], { env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (err += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), 5 * 60_000);
    p.on('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) return reject(new Error(`${variant} child exited ${code}: ${err.trim().split('\n').slice(-3).join(' | ')}`));
      resolve(JSON.parse(out.trim().split('\n').pop()!));
    });
  });
  // Each contender in its own child process (timed inside, after its imports), interleaved and
  // rotated so a noisy shared machine hits all alike.
  const times: Record<string, number[]> = { loader: [], readRanges: [], raw: [], whole: [] };
  const order = ['loader', 'readRanges', 'raw', 'whole'] as const;
  for (let i = 0; i < REPEATS * 2; i++) {
    for (let j = 0; j < order.length; j++) {
      const v = order[(i + j) % order.length];
      const r = await runChild(v);
      times[v].push(r.ms);
      if (v === 'raw') rawBytes = r.bytes;
      if (v === 'whole') wholeBytes = r.bytes;
    }
  }
  const loaderTimes = times.loader;
  const rawTimes = times.raw;
  const wholeTimes = times.whole;

  // Indexing a .ckpt with many small records, with and without the manifest, counted by a proxy.
  const R = Number(args.records);
  const many = Buffer.concat(Array.from({ length: R }, (_, i) => ckptRecord(`p${i}`, 'float32', [64], new Uint8Array(256))));
  await client.putObject('bench', 'many/rank_0/net.ckpt', 's3://bench/many/rank_0/net.ckpt', many);
  const proxy = await countingProxy(server.endpoint);
  const viaProxy = () => {
    const c = server.client();
    (c.config as { endpoint: string }).endpoint = proxy.url;
    return c;
  };
  const measureIndex = async (useManifest: boolean) => {
    const st = await openS3Storage('s3://bench/many', { client: viaProxy() });
    proxy.reset();
    const t0 = process.hrtime.bigint();
    const idx = await openCheckpointObject(st, 'rank_0/net.ckpt', { manifest: useManifest });
    return { ms: ms(t0), requests: proxy.requests(), bytes: proxy.bytesForwarded(), tensors: idx.tensors.size };
  };
  const noManifest = await measureIndex(false);
  const manyStorage = await openS3Storage('s3://bench/many');
  await writeManifest(manyStorage, await buildManifest(manyStorage));
  const withManifest = await measureIndex(true);
  await proxy.close();

  const loaderMs = median(loaderTimes);
  const rawMs = median(rawTimes);
  const wholeMs = median(wholeTimes);
  const result = {
    bench: 'load-s3',
    date: new Date().toISOString(),
    command: 'npm run bench:load:s3',
    server: 'MinIO (built from its Go module, loopback)',
    machine: { cpus: (await import('node:os')).cpus().length, node: process.version },
    checkpoint: { sourceRanks: SRC_RANKS, params: P, paramShape: [ROWS, COLS], layout: 'columns split 4 ways (tensor map [-1,0])', fileBytes },
    destination: { target: loadOpts.target, rank: 0, readBytes: stats!.readBytes, sliceBytes: stats!.sliceBytes, bytesTransferred: stats!.bytesTransferred, requests: stats!.requests, filesTouched: files.length },
    concurrencySweep: sweep,
    concurrencyChosen: C,
    loader: { ms: loaderMs, runs: loaderTimes, mbps: stats!.bytesTransferred / 1e6 / (loaderMs / 1000) },
    readRangesOnly: { ms: median(times.readRanges), runs: times.readRanges, note: 'core/storage readRanges over the plan ranges, bytes dropped: the storage layer without the executor' },
    ratioReadRangesToRaw: median(times.readRanges) / rawMs,
    rawRangedGet: { ms: rawMs, runs: rawTimes, bytes: rawBytes, requests: requests.flat().length },
    wholeFiles: { ms: wholeMs, runs: wholeTimes, bytes: wholeBytes },
    ratioLoaderToRaw: loaderMs / rawMs,
    target: 'loader <= 1.3 x raw',
    ratioLoaderToWholeFiles: loaderMs / wholeMs,
    indexing: { records: R, withoutManifest: noManifest, withManifest: withManifest },
  };
  await mkdir(join(here, 'results'), { recursive: true });
  await writeFile(join(here, 'results', 'load-s3.json'), JSON.stringify(result, null, 2) + '\n');
  process.stdout.write(`${JSON.stringify({ concurrencyChosen: C, loaderMs, readRangesMs: result.readRangesOnly.ms, rawMs, wholeMs, ratio: result.ratioLoaderToRaw, ratioReadRanges: result.ratioReadRangesToRaw, indexing: result.indexing })}\n`);
} finally {
  await server.stop();
  await rm(work, { recursive: true, force: true });
}
