// Where the API server is and how to authenticate: a kubeconfig file (current context; client
// certificates, bearer tokens) or the in-cluster service account. Written here rather than taken
// from @kubernetes/client-node because its HTTP stack (undici 8) does not load on Node 20.
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { ShardserveError } from '../core/errors.js';

export type Credentials = {
  server: URL;
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  insecureSkipTlsVerify?: boolean;
  /** Returns the bearer token (re-read from its file, so rotated tokens are picked up). */
  token?: () => string;
  namespace?: string;
};

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

function fileOrData(base: string, file: unknown, data: unknown): Buffer | undefined {
  if (typeof data === 'string') return Buffer.from(data, 'base64');
  if (typeof file === 'string') return readFileSync(file.startsWith('/') ? file : join(base, file));
  return undefined;
}

export function loadKubeconfig(path: string): Credentials {
  let doc: any;
  try {
    doc = parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new ShardserveError('BadConfig', `${path}: cannot read the kubeconfig (${(e as Error).message})`, { file: path, cause: e });
  }
  const base = join(path, '..');
  const ctxName = doc?.['current-context'];
  const ctx = (doc?.contexts ?? []).find((c: any) => c.name === ctxName)?.context;
  if (!ctx) throw new ShardserveError('BadConfig', `${path}: current-context '${ctxName}' is not among the contexts`, { file: path });
  const cluster = (doc.clusters ?? []).find((c: any) => c.name === ctx.cluster)?.cluster;
  if (!cluster?.server) throw new ShardserveError('BadConfig', `${path}: cluster '${ctx.cluster}' has no server`, { file: path });
  const user = (doc.users ?? []).find((u: any) => u.name === ctx.user)?.user ?? {};
  const token = typeof user.token === 'string' ? () => user.token as string : typeof user.tokenFile === 'string' ? () => readFileSync(user.tokenFile, 'utf8').trim() : undefined;
  return {
    server: new URL(cluster.server),
    ca: fileOrData(base, cluster['certificate-authority'], cluster['certificate-authority-data']),
    insecureSkipTlsVerify: Boolean(cluster['insecure-skip-tls-verify']),
    cert: fileOrData(base, user['client-certificate'], user['client-certificate-data']),
    key: fileOrData(base, user['client-key'], user['client-key-data']),
    token,
    namespace: ctx.namespace,
  };
}

export function inClusterCredentials(): Credentials {
  const host = process.env.KUBERNETES_SERVICE_HOST;
  const port = process.env.KUBERNETES_SERVICE_PORT ?? '443';
  if (!host) throw new ShardserveError('BadConfig', 'not running in a cluster (KUBERNETES_SERVICE_HOST is unset): pass --kubeconfig or set KUBECONFIG');
  return {
    server: new URL(`https://${host.includes(':') ? `[${host}]` : host}:${port}`),
    ca: readFileSync(join(SA_DIR, 'ca.crt')),
    token: () => readFileSync(join(SA_DIR, 'token'), 'utf8').trim(),
  };
}

/** --kubeconfig, else $KUBECONFIG, else in-cluster, else ~/.kube/config. */
export function loadCredentials(kubeconfig?: string): Credentials {
  if (kubeconfig) return loadKubeconfig(kubeconfig);
  if (process.env.KUBECONFIG) return loadKubeconfig(process.env.KUBECONFIG.split(':')[0]);
  if (process.env.KUBERNETES_SERVICE_HOST) return inClusterCredentials();
  return loadKubeconfig(join(homedir(), '.kube', 'config'));
}
