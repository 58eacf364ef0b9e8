// The real Kubernetes control plane for the operator suites: etcd, kube-apiserver,
// kube-controller-manager, kubectl and helm (plus a small kstatus tool), built once from their Go modules into the cache
// (cache.ts) and reused by every later run and clone. KUBEBUILDER_ASSETS (the envtest convention)
// is honoured: binaries found there are used as they are, and only the missing ones are built.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheDir } from '../cache.js';

export const K8S_VERSION = '1.36.3';
export const ETCD_VERSION = '3.6.8';
export const HELM_VERSION = '3.22.0';

const here = dirname(fileURLToPath(import.meta.url));

export type ControlPlaneBinaries = {
  etcd: string;
  kubeApiserver: string;
  kubeControllerManager: string;
  kubectl: string;
  helm: string;
  /** sigs.k8s.io/cli-utils kstatus (what Flux computes as health), reading an object on stdin. */
  kstatus: string;
};

type Target = { key: keyof ControlPlaneBinaries; file: string; module: string; pkg: string; ldflags: string };

const kubeLd = [
  '-s -w',
  `-X k8s.io/component-base/version.gitVersion=v${K8S_VERSION}`,
  `-X k8s.io/component-base/version.gitMajor=${K8S_VERSION.split('.')[0]}`,
  `-X k8s.io/component-base/version.gitMinor=${K8S_VERSION.split('.')[1]}`,
  '-X k8s.io/component-base/version.gitTreeState=clean',
  `-X k8s.io/client-go/pkg/version.gitVersion=v${K8S_VERSION}`,
].join(' ');

const targets: Target[] = [
  { key: 'kubeApiserver', file: 'kube-apiserver', module: 'tools', pkg: 'k8s.io/kubernetes/cmd/kube-apiserver', ldflags: kubeLd },
  { key: 'kubeControllerManager', file: 'kube-controller-manager', module: 'tools', pkg: 'k8s.io/kubernetes/cmd/kube-controller-manager', ldflags: kubeLd },
  { key: 'kubectl', file: 'kubectl', module: 'tools', pkg: 'k8s.io/kubernetes/cmd/kubectl', ldflags: kubeLd },
  { key: 'etcd', file: 'etcd', module: 'tools', pkg: 'go.etcd.io/etcd/server/v3', ldflags: '-s -w' },
  { key: 'helm', file: 'helm', module: 'helm', pkg: 'helm.sh/helm/v3/cmd/helm', ldflags: `-s -w -X helm.sh/helm/v3/internal/version.version=v${HELM_VERSION}` },
  { key: 'kstatus', file: 'kstatus', module: 'kstatus', pkg: 'shardserve.test/k8s-kstatus', ldflags: '-s -w' },
];

/** The cache directory the binaries of this version set are built into. */
export function binariesCacheDir(): string {
  return cacheDir(`k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-helm-${HELM_VERSION}`);
}

function isExecutable(path: string): boolean {
  try {
    const st = statSync(path);
    return st.isFile() && (st.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

function run(cmd: string, args: string[], cwd: string, prefix: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd,
      env: { ...process.env, GOFLAGS: '-buildvcs=false -mod=mod', GOTOOLCHAIN: 'local', CGO_ENABLED: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const tail: string[] = [];
    const onData = (b: Buffer) => {
      for (const line of b.toString().split('\n')) {
        if (!line) continue;
        tail.push(line);
        if (tail.length > 40) tail.shift();
        process.stderr.write(`${prefix} ${line}\n`);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', (e) => reject(new Error(`${prefix} could not start ${cmd}: ${e.message} (is Go installed and on PATH?)`)));
    child.on('close', (code) =>
      code === 0 ? resolve() : reject(new Error(`${prefix} ${cmd} ${args.join(' ')} failed with exit code ${code}:\n${tail.join('\n')}`)),
    );
  });
}

/** Waits for (or takes) a directory lock so parallel test workers never build the same binary twice. */
async function withLock<T>(lockDir: string, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 90 * 60_000;
  for (;;) {
    try {
      mkdirSync(lockDir);
      writeFileSync(join(lockDir, 'pid'), String(process.pid));
      break;
    } catch {
      // A lock left by a dead builder is stale: take it over.
      try {
        const pid = Number((await import('node:fs')).readFileSync(join(lockDir, 'pid'), 'utf8'));
        if (pid > 0) process.kill(pid, 0);
      } catch {
        rmSync(lockDir, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`control-plane build lock ${lockDir} held for over 90 minutes`);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(lockDir, { recursive: true, force: true });
  }
}

/**
 * Returns the paths of etcd, kube-apiserver, kube-controller-manager, kubectl and helm, building
 * whatever is missing (once; later calls are instant). Throws with the build's output on failure.
 */
export async function ensureControlPlaneBinaries(): Promise<ControlPlaneBinaries> {
  const dir = binariesCacheDir();
  const assets = process.env.KUBEBUILDER_ASSETS;
  const out = {} as ControlPlaneBinaries;
  const missing: Target[] = [];
  for (const t of targets) {
    const fromAssets = assets ? join(assets, t.file) : undefined;
    if (fromAssets && isExecutable(fromAssets)) out[t.key] = fromAssets;
    else if (isExecutable(join(dir, t.file))) out[t.key] = join(dir, t.file);
    else missing.push(t);
  }
  if (missing.length === 0) return out;
  await withLock(join(dir, '.build-lock'), async () => {
    for (const t of missing) {
      const dest = join(dir, t.file);
      if (isExecutable(dest)) {
        out[t.key] = dest;
        continue;
      }
      const t0 = Date.now();
      process.stderr.write(`k8s test bed: building ${t.file} from ${t.pkg} into ${dir} (cold builds take many minutes)\n`);
      const tmp = `${dest}.tmp-${process.pid}`;
      await run('nice', ['-n', '10', 'go', 'build', '-trimpath', `-ldflags=${t.ldflags}`, '-o', tmp, t.pkg], join(here, t.module), `[build ${t.file}]`);
      renameSync(tmp, dest);
      process.stderr.write(`k8s test bed: ${t.file} built in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
      out[t.key] = dest;
    }
  });
  for (const t of targets) {
    if (!existsSync(out[t.key])) throw new Error(`k8s test bed: ${t.file} missing at ${out[t.key]} after build`);
  }
  return out;
}

// `npx tsx test/harness/k8s/binaries.ts` builds everything and prints the paths.
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const t0 = Date.now();
  const bins = await ensureControlPlaneBinaries();
  process.stdout.write(`${JSON.stringify(bins, null, 2)}\nready in ${((Date.now() - t0) / 1000).toFixed(0)} s\n`);
}
