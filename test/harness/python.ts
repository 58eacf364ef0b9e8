// The Python test bed: one venv (MindSpore as the oracle, onnx/onnxruntime, safetensors, tritonclient)
// created from test/harness/requirements.txt, cached under cacheDir('venv-<hash of requirements.txt>')
// so every clone and CI run on this machine reuses it. `ensurePythonVenv()` builds it once (idempotent,
// a marker file is written only after a successful install + import check); `runPython()` runs a script
// with the venv's interpreter under a deadline.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheDir } from './cache.js';

const here = dirname(fileURLToPath(import.meta.url));
/** The pinned requirements; their hash names the venv directory. */
export const REQUIREMENTS_FILE = join(here, 'requirements.txt');
/** Python minor versions the pinned wheels (cp311) install on. */
const SUPPORTED_PYTHON = ['3.11'];
const MARKER = 'shardserve-venv-ok.json';
const LOCK = 'shardserve-venv.lock';
const INSTALL_DEADLINE_MS = 60 * 60_000;
const LOCK_WAIT_MS = 70 * 60_000;

let pending: Promise<string> | undefined;

function requirementsHash(): string {
  return createHash('sha256').update(readFileSync(REQUIREMENTS_FILE)).digest('hex').slice(0, 16);
}

/** Where the venv for the current requirements.txt lives (not created). */
export function pythonVenvDir(): string {
  return cacheDir(`venv-${requirementsHash()}`);
}

function venvPython(dir: string): string {
  return join(dir, 'bin', 'python');
}

/**
 * Make sure the venv exists and has every pinned package installed; resolve to its python path.
 * The first call on a machine installs (minutes: MindSpore is large) and prints progress; later calls
 * only check the marker. Concurrent callers (vitest workers, prepare.ts) serialize on a lock directory.
 * Any failure rejects with the command, its exit status and the tail of its output.
 */
export function ensurePythonVenv(): Promise<string> {
  pending ??= ensureOnce().catch((err) => {
    pending = undefined;
    throw err;
  });
  return pending;
}

async function ensureOnce(): Promise<string> {
  const hash = requirementsHash();
  const dir = pythonVenvDir();
  const python = venvPython(dir);
  if (markerOk(dir, hash)) return python;

  const lock = join(dir, '..', `${LOCK}-${hash}`);
  await acquireLock(lock, () => markerOk(dir, hash));
  try {
    if (markerOk(dir, hash)) return python;
    await install(dir, hash);
    return python;
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

function markerOk(dir: string, hash: string): boolean {
  const marker = join(dir, MARKER);
  if (!existsSync(marker) || !existsSync(venvPython(dir))) return false;
  try {
    return JSON.parse(readFileSync(marker, 'utf8')).requirementsHash === hash;
  } catch {
    return false;
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** mkdir is atomic: the process that creates the lock directory installs; the others wait for the marker. */
async function acquireLock(lock: string, done: () => boolean): Promise<void> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  let announced = false;
  for (;;) {
    try {
      mkdirSync(lock);
      writeFileSync(join(lock, 'pid'), String(process.pid));
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    if (done()) return;
    let owner = NaN;
    try {
      owner = Number(readFileSync(join(lock, 'pid'), 'utf8'));
    } catch {
      /* the owner has not written its pid yet */
    }
    if (Number.isInteger(owner) && owner > 0 && !pidAlive(owner)) {
      process.stdout.write(`python venv: removing stale lock ${lock} (process ${owner} is gone)\n`);
      rmSync(lock, { recursive: true, force: true });
      continue;
    }
    if (!announced) {
      process.stdout.write(`python venv: another process (${owner || '?'}) is installing; waiting for it\n`);
      announced = true;
    }
    if (Date.now() > deadline) {
      throw new Error(`python venv: waited ${LOCK_WAIT_MS / 60_000} min for the install lock ${lock}; remove it if no install is running`);
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function install(dir: string, hash: string): Promise<void> {
  const basePython = process.env.SHARDSERVE_PYTHON ?? 'python3';
  const version = (await run(basePython, ['-c', 'import sys; print("%d.%d" % sys.version_info[:2])'], { timeoutMs: 30_000 })).stdout.trim();
  if (!SUPPORTED_PYTHON.includes(version)) {
    throw new Error(
      `python venv: ${basePython} is Python ${version}, but the pinned wheels need Python ${SUPPORTED_PYTHON.join(' or ')}; ` +
        'set SHARDSERVE_PYTHON to such an interpreter',
    );
  }
  process.stdout.write(`python venv: creating ${dir} with ${basePython} (Python ${version})\n`);
  rmSync(dir, { recursive: true, force: true }); // a half-finished earlier attempt
  mkdirSync(dir, { recursive: true });
  await run(basePython, ['-m', 'venv', dir], { timeoutMs: 5 * 60_000, echo: true });
  const python = venvPython(dir);
  process.stdout.write(`python venv: pip install -r ${REQUIREMENTS_FILE} (MindSpore is large; the first install takes minutes)\n`);
  await run(python, ['-m', 'pip', 'install', '--disable-pip-version-check', '--no-input', '--progress-bar', 'off', '-r', REQUIREMENTS_FILE], {
    timeoutMs: INSTALL_DEADLINE_MS,
    echo: true,
  });
  process.stdout.write('python venv: checking that the pinned packages import\n');
  const check = await run(
    python,
    [
      '-c',
      'import json, mindspore, numpy, safetensors, onnx, onnxruntime, tritonclient.grpc, tritonclient.http; ' +
        'print(json.dumps({"mindspore": mindspore.__version__, "numpy": numpy.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}))',
    ],
    { timeoutMs: 5 * 60_000, env: quietEnv() },
  );
  const versions = JSON.parse(check.stdout.trim().split('\n').pop() ?? '{}');
  writeFileSync(join(dir, MARKER), JSON.stringify({ requirementsHash: hash, installedAt: new Date().toISOString(), versions }, null, 2) + '\n');
  process.stdout.write(`python venv: ready (${JSON.stringify(versions)})\n`);
}

/** Environment that keeps MindSpore's C++ logging (glog) to errors only and keeps __pycache__ out of the repo. */
function quietEnv(): Record<string, string> {
  return { GLOG_v: '3', PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' };
}

type RunOpts = { timeoutMs: number; env?: Record<string, string>; cwd?: string; echo?: boolean };

function run(cmd: string, args: string[], opts: RunOpts): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: { ...process.env, ...(opts.env ?? {}) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs);
    child.stdout.on('data', (b: Buffer) => {
      out.push(b);
      if (opts.echo) process.stdout.write(b);
    });
    child.stderr.on('data', (b: Buffer) => {
      err.push(b);
      if (opts.echo) process.stderr.write(b);
    });
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`${cmd}: could not start (${e.message})`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      const what = `${cmd} ${args.map((a) => (a.length > 80 ? a.slice(0, 77) + '...' : a)).join(' ')}`;
      if (timedOut) {
        reject(Object.assign(new Error(`${what}: no exit within ${opts.timeoutMs} ms (killed)\n${tail(stderr)}`), { stdout, stderr }));
      } else if (code !== 0) {
        reject(
          Object.assign(new Error(`${what}: exited with ${code ?? signal}\n${tail(stderr) || tail(stdout)}`), { stdout, stderr, exitCode: code }),
        );
      } else {
        resolvePromise({ stdout, stderr });
      }
    });
  });
}

function tail(s: string, lines = 40): string {
  return s.trimEnd().split('\n').slice(-lines).join('\n');
}

/**
 * Run `script` (a path, relative to the current directory or absolute) with the venv's python.
 * Resolves with its output when it exits 0; rejects when it exits non-zero (the error message holds
 * its stderr; the error object also carries `stdout`, `stderr`, `exitCode`) or when `timeoutMs`
 * (default 120 s) passes, in which case the process is killed. MindSpore's own logging is limited to
 * errors unless `env` overrides GLOG_v.
 */
export async function runPython(
  script: string,
  args: string[],
  opts: { timeoutMs?: number; env?: Record<string, string>; cwd?: string } = {},
): Promise<{ stdout: string; stderr: string }> {
  const python = await ensurePythonVenv();
  return run(python, [resolve(script), ...args], {
    timeoutMs: opts.timeoutMs ?? 120_000,
    env: { ...quietEnv(), ...(opts.env ?? {}) },
    cwd: opts.cwd,
  });
}
