// A thin Kubernetes REST client over the kubeconfig's credentials: just the verbs the operator
// uses, every call with a deadline, every write counted (the metrics and the write budget tests).
import https from 'node:https';
import http from 'node:http';
import type { Credentials } from './kubeconfig.js';

export class KubeApiError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    message: string,
  ) {
    super(message);
    this.name = 'KubeApiError';
  }
}

export type WriteCounter = (verb: string, kind: string) => void;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Json = any;

export class KubeApi {
  private readonly server: URL;
  private readonly agent: https.Agent | http.Agent;
  /** Long-lived watch streams get their own sockets so they never starve the writes. */
  private readonly watchAgent: https.Agent | http.Agent;

  constructor(
    private readonly creds: Credentials,
    private readonly onWrite: WriteCounter = () => {},
    private readonly timeoutMs = 30_000,
  ) {
    this.server = creds.server;
    const tls = { ca: creds.ca, cert: creds.cert, key: creds.key, rejectUnauthorized: !creds.insecureSkipTlsVerify };
    const isHttps = this.server.protocol === 'https:';
    this.agent = isHttps ? new https.Agent({ keepAlive: true, maxSockets: 16, ...tls }) : new http.Agent({ keepAlive: true, maxSockets: 16 });
    this.watchAgent = isHttps ? new https.Agent({ keepAlive: false, ...tls }) : new http.Agent({ keepAlive: false });
  }

  private headers(): Record<string, string> {
    const t = this.creds.token?.();
    return t ? { authorization: `Bearer ${t}` } : {};
  }

  /**
   * A watch stream: calls onEvent for every event line, resolves when the server ends the stream,
   * rejects on a transport error. `abort` ends it early.
   */
  watch(path: string, onEvent: (ev: Json) => void, signal: AbortSignal): Promise<void> {
    const url = new URL(path, this.server);
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(url, { method: 'GET', agent: this.watchAgent, headers: { ...this.headers(), accept: 'application/json' }, signal }, (res) => {
        if ((res.statusCode ?? 0) >= 300) {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => reject(new KubeApiError(res.statusCode ?? 0, '', `watch ${url.pathname}: ${res.statusCode} ${Buffer.concat(chunks).toString('utf8').slice(0, 500)}`)));
          return;
        }
        let buf = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          buf += chunk;
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line) continue;
            try {
              onEvent(JSON.parse(line));
            } catch (e) {
              req.destroy();
              reject(e);
              return;
            }
          }
        });
        res.on('end', () => resolve());
        res.on('error', (e) => (signal.aborted ? resolve() : reject(e)));
      });
      req.on('error', (e) => (signal.aborted ? resolve() : reject(e)));
      req.end();
    });
  }

  async request(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<Json> {
    const url = new URL(path, this.server);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const mod = url.protocol === 'https:' ? https : http;
    return new Promise((resolve, reject) => {
      const req = mod.request(
        url,
        {
          method,
          agent: this.agent,
          headers: { ...this.headers(), accept: 'application/json', ...(payload ? { 'content-type': contentType, 'content-length': payload.length } : {}) },
          timeout: this.timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let json: Json = undefined;
            try {
              json = text ? JSON.parse(text) : undefined;
            } catch {
              json = { message: text };
            }
            const status = res.statusCode ?? 0;
            if (status >= 200 && status < 300) resolve(json);
            else reject(new KubeApiError(status, json?.reason ?? '', `${method} ${url.pathname}: ${status} ${json?.message ?? text}`));
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${url.pathname}: no answer within ${this.timeoutMs} ms`)));
      req.on('error', reject);
      if (payload) req.write(payload);
      req.end();
    });
  }

  get(path: string): Promise<Json> {
    return this.request('GET', path);
  }

  /** Server-side apply with the operator's one field manager (force: we own these objects). */
  async apply(path: string, obj: Json, fieldManager: string): Promise<Json> {
    this.onWrite('apply', obj.kind);
    return this.request('PATCH', `${path}?fieldManager=${encodeURIComponent(fieldManager)}&force=true`, obj, 'application/apply-patch+yaml');
  }

  async create(path: string, obj: Json): Promise<Json> {
    this.onWrite('create', obj.kind);
    return this.request('POST', path, obj);
  }

  async replace(path: string, obj: Json, kind = obj.kind): Promise<Json> {
    this.onWrite('update', kind);
    return this.request('PUT', path, obj);
  }

  async delete(path: string, kind: string, body?: Json): Promise<Json> {
    this.onWrite('delete', kind);
    return this.request('DELETE', path, body);
  }

  close(): void {
    this.agent.destroy();
    this.watchAgent.destroy();
  }
}

/** REST path of an object (or of its collection when name is omitted). */
export function objectPath(apiVersion: string, kind: string, namespace: string, name?: string): string {
  const plural = PLURALS[kind];
  if (!plural) throw new Error(`no REST path known for kind ${kind}`);
  const prefix = apiVersion.includes('/') ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
  return `${prefix}/namespaces/${namespace}/${plural}${name ? `/${name}` : ''}`;
}

const PLURALS: Record<string, string> = {
  ConfigMap: 'configmaps',
  Service: 'services',
  StatefulSet: 'statefulsets',
  EndpointSlice: 'endpointslices',
  Pod: 'pods',
  Event: 'events',
  Lease: 'leases',
  DistributedInference: 'distributedinferences',
};
