// A real S3 server for the suites: MinIO built from its Go module (test/harness/go-minio pins the
// version) into the cache, started on a free loopback port with its own data directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rename } from 'node:fs/promises';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { S3Client } from '../../core/storage/s3.js';
import { cacheDir } from './cache.js';
import { freePort } from './ports.js';

const here = dirname(fileURLToPath(import.meta.url));
const goModuleDir = join(here, 'go-minio');

/** The pinned MinIO module version (from go-minio/go.mod). */
export function minioVersion(): string {
  const mod = readFileSync(join(goModuleDir, 'go.mod'), 'utf8');
  const m = /^\s*github\.com\/minio\/minio (v\S+)/m.exec(mod);
  if (!m) throw new Error(`${join(goModuleDir, 'go.mod')}: no github.com/minio/minio requirement`);
  return m[1];
}

function run(cmd: string, args: string[], opts: { cwd: string; env?: NodeJS.ProcessEnv; timeoutMs: number }): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'inherit', 'inherit'] });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')}: did not finish within ${opts.timeoutMs / 1000} s`));
    }, opts.timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${cmd}: cannot run (${e.message}); Go is needed to build MinIO for the S3 tests`));
    });
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`${cmd} ${args.join(' ')}: exited with ${code ?? signal}`));
    });
  });
}

let building: Promise<string> | undefined;

/**
 * Path of the MinIO server binary, building it once (cached by version) with
 * `go build github.com/minio/minio` in go-minio/. Fails loudly when it cannot be built.
 */
export function ensureMinioBinary(): Promise<string> {
  building ??= (async () => {
    const version = minioVersion();
    const dir = cacheDir('bin', `minio-${version}`);
    const bin = join(dir, 'minio');
    if (existsSync(bin)) return bin;
    const tmp = `${bin}.tmp-${process.pid}`;
    process.stdout.write(`building MinIO ${version} from its Go module into ${dir} (several minutes, once) ...\n`);
    const t0 = Date.now();
    await run('nice', ['-n', '10', 'go', 'build', '-o', tmp, 'github.com/minio/minio'], {
      cwd: goModuleDir,
      env: { GOTOOLCHAIN: 'local', GOFLAGS: '-mod=mod' },
      timeoutMs: 60 * 60 * 1000,
    });
    await rename(tmp, bin);
    process.stdout.write(`MinIO built in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
    return bin;
  })();
  building.catch(() => (building = undefined));
  return building;
}

export interface S3Server {
  endpoint: string;
  port: number;
  accessKey: string;
  secretKey: string;
  region: string;
  process: ChildProcess;
  /** The AWS_* environment that points shardserve at this server. */
  env(): Record<string, string>;
  /** An S3 client of ours with the root credentials. */
  client(): S3Client;
  /** Stop the server (SIGTERM, then SIGKILL after 5 s). Idempotent. */
  stop(): Promise<void>;
}

/** Start MinIO on a free loopback port; resolves once it answers its health check (deadline 60 s). */
export async function startS3Server(opts: { dataDir: string; port?: number; startupTimeoutMs?: number }): Promise<S3Server> {
  const bin = await ensureMinioBinary();
  await mkdir(opts.dataDir, { recursive: true });
  const port = opts.port ?? (await freePort());
  const consolePort = await freePort();
  const accessKey = 'shardserve-test';
  const secretKey = 'shardserve-test-secret-key';
  const region = 'us-east-1';
  const endpoint = `http://127.0.0.1:${port}`;
  let log = '';
  const child = spawn(bin, ['server', opts.dataDir, '--address', `127.0.0.1:${port}`, '--console-address', `127.0.0.1:${consolePort}`, '--quiet'], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? '',
      MINIO_ROOT_USER: accessKey,
      MINIO_ROOT_PASSWORD: secretKey,
      MINIO_REGION: region,
      MINIO_BROWSER: 'off',
      MINIO_UPDATE: 'off',
      MINIO_CI_CD: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (d) => (log = (log + d).slice(-4000)));
  child.stderr!.on('data', (d) => (log = (log + d).slice(-4000)));
  let exited = false;
  child.on('exit', () => (exited = true));
  const stop = async () => {
    if (exited) return;
    const gone = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(t);
  };
  const deadline = Date.now() + (opts.startupTimeoutMs ?? 60_000);
  for (;;) {
    if (exited) throw new Error(`MinIO exited during startup:\n${log}`);
    try {
      const res = await fetch(`${endpoint}/minio/health/ready`, { signal: AbortSignal.timeout(2000) });
      if (res.ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`MinIO did not become ready on ${endpoint} within ${(opts.startupTimeoutMs ?? 60_000) / 1000} s:\n${log}`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  const env = () => ({
    AWS_ACCESS_KEY_ID: accessKey,
    AWS_SECRET_ACCESS_KEY: secretKey,
    AWS_REGION: region,
    AWS_ENDPOINT_URL: endpoint,
    AWS_S3_FORCE_PATH_STYLE: 'true',
  });
  const client = () => new S3Client({ endpoint, region, pathStyle: true, credentials: { accessKeyId: accessKey, secretAccessKey: secretKey }, credentialSource: 'test harness' });
  return { endpoint, port, accessKey, secretKey, region, process: child, env, client, stop };
}

/** Upload every file below `dir` to `s3://bucket/prefix/...` with our own client; returns the keys. */
export async function uploadDir(client: S3Client, bucket: string, prefix: string, dir: string): Promise<string[]> {
  const keys: string[] = [];
  const walk = async (d: string) => {
    for (const ent of await readdir(d, { withFileTypes: true })) {
      const p = join(d, ent.name);
      if (ent.isDirectory()) await walk(p);
      else if (ent.isFile()) {
        const rel = relative(dir, p).split(sep).join('/');
        const key = prefix ? `${prefix.replace(/\/+$/, '')}/${rel}` : rel;
        await client.putObject(bucket, key, `s3://${bucket}/${key}`, await readFile(p));
        keys.push(key);
      }
    }
  };
  await walk(dir);
  return keys.sort();
}
