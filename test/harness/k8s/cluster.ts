// A real Kubernetes control plane on loopback for the operator suites: etcd, kube-apiserver (secure
// serving with generated certificates, RBAC authorization, service-account keys, an audit log of
// every write) and kube-controller-manager (StatefulSets create pods; garbage collection runs). No
// kubelet: tests write pod status themselves. Every wait has a deadline.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { freePort } from '../ports.js';
import { ensureControlPlaneBinaries, type ControlPlaneBinaries } from './binaries.js';

export type ControlPlane = {
  dir: string;
  /** Admin (system:masters) kubeconfig. */
  kubeconfig: string;
  server: string;
  bins: ControlPlaneBinaries;
  auditLog: string;
  /** A kubeconfig for a user with a client certificate (CN=user, O=groups). */
  kubeconfigFor: (user: string, groups: string[]) => string;
  stop: () => Promise<void>;
};

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')} failed: ${r.stderr}`);
}

function issueCert(dir: string, name: string, subject: string, ext?: string): void {
  openssl(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', `${name}.key`, '-subj', subject, '-out', `${name}.csr`], dir);
  const args = ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-out', `${name}.crt`];
  if (ext) {
    writeFileSync(join(dir, `${name}.ext`), ext);
    args.push('-extfile', `${name}.ext`);
  }
  openssl(args, dir);
}

function kubeconfig(server: string, dir: string, name: string): string {
  const b64 = (f: string) => readFileSync(join(dir, f)).toString('base64');
  const path = join(dir, `${name}.kubeconfig`);
  writeFileSync(
    path,
    [
      'apiVersion: v1',
      'kind: Config',
      'clusters:',
      `- name: local\n  cluster:\n    server: ${server}\n    certificate-authority-data: ${b64('ca.crt')}`,
      'users:',
      `- name: ${name}\n  user:\n    client-certificate-data: ${b64(`${name}.crt`)}\n    client-key-data: ${b64(`${name}.key`)}`,
      'contexts:',
      `- name: local\n  context:\n    cluster: local\n    user: ${name}`,
      'current-context: local',
      '',
    ].join('\n'),
  );
  return path;
}

async function waitFor(what: string, deadlineMs: number, probe: () => Promise<boolean>, logTail: () => string): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  let last = '';
  while (Date.now() < deadline) {
    try {
      if (await probe()) return;
    } catch (e) {
      last = String(e);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${what} not up within ${deadlineMs / 1000} s (${last})\n--- log tail ---\n${logTail()}`);
}

function startProcess(bin: string, args: string[], logPath: string): ChildProcess {
  const log = createWriteStream(logPath);
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  return child;
}

const tail = (path: string) => () => {
  try {
    return readFileSync(path, 'utf8').split('\n').slice(-30).join('\n');
  } catch {
    return '';
  }
};

async function stopProcess(child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

/** Runs kubectl against a kubeconfig; never throws (tests assert on code/stdout/stderr). */
export function kubectl(cp: Pick<ControlPlane, 'bins' | 'kubeconfig'>, args: string[], opts: { input?: string; kubeconfig?: string; timeoutMs?: number } = {}) {
  // A discovery cache per control plane (the default one under $HOME would outlive the cluster).
  const cacheDir = join(dirname(cp.kubeconfig), 'kubectl-cache');
  const r = spawnSync(cp.bins.kubectl, ['--kubeconfig', opts.kubeconfig ?? cp.kubeconfig, `--cache-dir=${cacheDir}`, '--request-timeout=30s', ...args], {
    input: opts.input,
    encoding: 'utf8',
    timeout: opts.timeoutMs ?? 60_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}

export async function startControlPlane(): Promise<ControlPlane> {
  const bins = await ensureControlPlaneBinaries();
  const dir = mkdtempSync(join(tmpdir(), 'shardserve-k8s-'));
  const [etcdPort, peerPort, apiPort] = [await freePort(), await freePort(), await freePort()];
  const server = `https://127.0.0.1:${apiPort}`;

  openssl(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=shardserve-test-ca'], dir);
  issueCert(dir, 'apiserver', '/CN=kube-apiserver', 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n');
  issueCert(dir, 'admin', '/O=system:masters/CN=admin', 'extendedKeyUsage=clientAuth\n');
  openssl(['genrsa', '-out', 'sa.key', '2048'], dir);
  openssl(['rsa', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], dir);
  // Audit only writes (what the "no writes when nothing changed" checks count).
  writeFileSync(
    join(dir, 'audit-policy.yaml'),
    [
      'apiVersion: audit.k8s.io/v1',
      'kind: Policy',
      'omitStages: ["RequestReceived"]',
      'rules:',
      '- level: Metadata',
      '  verbs: ["create", "update", "patch", "delete", "deletecollection"]',
      '- level: None',
      '',
    ].join('\n'),
  );
  const auditLog = join(dir, 'audit.log');

  const procs: ChildProcess[] = [];
  const stop = async () => {
    for (const p of procs.reverse()) await stopProcess(p);
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const etcdLog = join(dir, 'etcd.log');
    procs.push(
      startProcess(bins.etcd, [
        '--name=default',
        `--data-dir=${join(dir, 'etcd')}`,
        `--listen-client-urls=http://127.0.0.1:${etcdPort}`,
        `--advertise-client-urls=http://127.0.0.1:${etcdPort}`,
        `--listen-peer-urls=http://127.0.0.1:${peerPort}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${peerPort}`,
        `--initial-cluster=default=http://127.0.0.1:${peerPort}`,
        '--unsafe-no-fsync',
        '--log-level=warn',
      ], etcdLog),
    );
    await waitFor('etcd', 60_000, async () => (await fetch(`http://127.0.0.1:${etcdPort}/health`)).ok, tail(etcdLog));

    const apiLog = join(dir, 'kube-apiserver.log');
    procs.push(
      startProcess(bins.kubeApiserver, [
        `--etcd-servers=http://127.0.0.1:${etcdPort}`,
        '--bind-address=127.0.0.1',
        '--advertise-address=127.0.0.1',
        `--secure-port=${apiPort}`,
        `--cert-dir=${dir}`,
        `--tls-cert-file=${join(dir, 'apiserver.crt')}`,
        `--tls-private-key-file=${join(dir, 'apiserver.key')}`,
        `--client-ca-file=${join(dir, 'ca.crt')}`,
        '--authorization-mode=RBAC',
        '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
        `--service-account-key-file=${join(dir, 'sa.pub')}`,
        `--service-account-signing-key-file=${join(dir, 'sa.key')}`,
        '--service-cluster-ip-range=10.0.0.0/24',
        '--allow-privileged=true',
        `--audit-policy-file=${join(dir, 'audit-policy.yaml')}`,
        `--audit-log-path=${auditLog}`,
        '--audit-log-mode=blocking',
        '--profiling=false',
        '--endpoint-reconciler-type=none',
        '--v=0',
      ], apiLog),
    );
    const admin = kubeconfig(server, dir, 'admin');
    const cp = { bins, kubeconfig: admin };
    await waitFor('kube-apiserver', 180_000, async () => kubectl(cp, ['get', '--raw', '/readyz']).stdout.trim() === 'ok', tail(apiLog));

    const kcmLog = join(dir, 'kube-controller-manager.log');
    procs.push(
      startProcess(bins.kubeControllerManager, [
        `--kubeconfig=${admin}`,
        '--leader-elect=false',
        '--secure-port=0',
        '--use-service-account-credentials=false',
        `--service-account-private-key-file=${join(dir, 'sa.key')}`,
        `--root-ca-file=${join(dir, 'ca.crt')}`,
        '--controllers=*',
        '--concurrent-statefulset-syncs=10',
        '--concurrent-gc-syncs=20',
        '--v=0',
      ], kcmLog),
    );
    // The ServiceAccount controller creating "default" proves the controller manager runs.
    await waitFor('kube-controller-manager', 120_000, async () => kubectl(cp, ['get', 'serviceaccount', 'default', '-n', 'default', '-o', 'name']).code === 0, tail(kcmLog));

    return {
      dir,
      kubeconfig: admin,
      server,
      bins,
      auditLog,
      kubeconfigFor: (user, groups) => {
        const name = `user-${user.replace(/[^a-z0-9-]/gi, '-')}`;
        issueCert(dir, name, `${groups.map((g) => `/O=${g}`).join('')}/CN=${user}`, 'extendedKeyUsage=clientAuth\n');
        return kubeconfig(server, dir, name);
      },
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

/** Audit events of writes by `user` (after `since`, an ISO time), from the API server's audit log. */
export function auditedWrites(cp: ControlPlane, user: string, since?: string): { verb: string; uri: string; code: number; time: string }[] {
  let text = '';
  try {
    text = readFileSync(cp.auditLog, 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l))
    .filter((e) => e.stage === 'ResponseComplete' && e.user?.username === user && (!since || e.requestReceivedTimestamp >= since))
    .map((e) => ({ verb: e.verb, uri: e.requestURI, code: e.responseStatus?.code ?? 0, time: e.requestReceivedTimestamp }));
}
