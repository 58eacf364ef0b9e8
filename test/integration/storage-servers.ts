// Small loopback servers the storage suites put in front of (or instead of) real backends: a static
// file server with Range support (and switchable faults), and a forwarding proxy that counts the
// response bytes and can cut bodies short.
import { createHash } from 'node:crypto';
import { stat, readFile } from 'node:fs/promises';
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { join, resolve, sep } from 'node:path';

export interface Listening {
  url: string;
  close(): Promise<void>;
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return `http://127.0.0.1:${(server.address() as { port: number }).port}`;
}

function closer(server: Server): () => Promise<void> {
  return () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
}

export interface FileServer extends Listening {
  /** Requests seen, as "METHOD path [range]". */
  log: string[];
  /** Payload bytes sent. */
  bytesSent: () => number;
  /** Faults: ignore Range (200 + whole body), truncate bodies to N bytes, fail the next N requests with a status, or hang. */
  faults: { ignoreRange?: boolean; truncateTo?: number; failNext?: { count: number; status: number }; hang?: boolean };
}

/** Serve `root` over HTTP with HEAD, GET, Range (single range) and a strong ETag (sha256 of the bytes). */
export async function serveDir(root: string): Promise<FileServer> {
  const base = resolve(root);
  const log: string[] = [];
  let sent = 0;
  const faults: FileServer['faults'] = {};
  const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    const range = req.headers.range;
    log.push(`${req.method} ${req.url}${range ? ` ${range}` : ''}`);
    if (faults.hang) return; // never answer
    if (faults.failNext && faults.failNext.count > 0) {
      faults.failNext.count--;
      res.writeHead(faults.failNext.status).end();
      return;
    }
    const path = resolve(base, '.' + decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname));
    if (path !== base && !path.startsWith(base + sep)) return void res.writeHead(403).end();
    let data: Buffer;
    let mtime: Date;
    try {
      const st = await stat(path);
      if (!st.isFile()) throw new Error('dir');
      mtime = st.mtime;
      data = await readFile(path);
    } catch {
      return void res.writeHead(404).end();
    }
    const etag = `"${createHash('sha256').update(data).digest('hex').slice(0, 32)}"`;
    const ifMatch = req.headers['if-match'];
    if (ifMatch && ifMatch !== etag) return void res.writeHead(412).end();
    let status = 200;
    let body = data;
    const headers: Record<string, string | number> = { etag, 'accept-ranges': 'bytes', 'last-modified': mtime.toUTCString() };
    const m = range && !faults.ignoreRange ? /^bytes=(\d+)-(\d+)$/.exec(range) : null;
    if (m) {
      const start = Number(m[1]);
      const end = Math.min(Number(m[2]), data.length - 1);
      if (start >= data.length || start > end) return void res.writeHead(416, { 'content-range': `bytes */${data.length}` }).end();
      status = 206;
      body = data.subarray(start, end + 1);
      headers['content-range'] = `bytes ${start}-${end}/${data.length}`;
    }
    headers['content-length'] = body.length;
    res.writeHead(status, headers);
    if (req.method === 'HEAD') return void res.end();
    if (faults.truncateTo !== undefined && faults.truncateTo < body.length) {
      // Announce the full length, send less, then drop the connection: a body cut short.
      res.write(body.subarray(0, faults.truncateTo));
      sent += faults.truncateTo;
      res.socket?.destroy();
      return;
    }
    sent += body.length;
    res.end(body);
  });
  const url = await listen(server);
  return { url, log, faults, bytesSent: () => sent, close: closer(server) };
}

export interface Proxy extends Listening {
  /** Response body bytes forwarded to clients. */
  bytesForwarded: () => number;
  requests: () => number;
  /** GET requests whose response carried a body, with their Range header. */
  gets: { range?: string; bytes: number }[];
  /** When set, every response body is cut after this many bytes but still announces its full length. */
  truncateTo?: number;
  reset(): void;
}

/** A forwarding HTTP proxy (reverse proxy style: clients talk to it as if it were the target). */
export async function countingProxy(target: string): Promise<Proxy> {
  const t = new URL(target);
  let forwarded = 0;
  let requests = 0;
  const gets: Proxy['gets'] = [];
  const state: { truncateTo?: number } = {};
  const server = createServer((req, res) => {
    requests++;
    const up = httpRequest(
      { host: t.hostname, port: t.port, method: req.method, path: req.url, headers: req.headers },
      (upRes) => {
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        let n = 0;
        upRes.on('data', (chunk: Buffer) => {
          if (state.truncateTo !== undefined && n + chunk.length > state.truncateTo) {
            const keep = Math.max(0, state.truncateTo - n);
            if (keep) res.write(chunk.subarray(0, keep));
            n += keep;
            forwarded += keep;
            upRes.destroy();
            res.socket?.destroy();
            return;
          }
          n += chunk.length;
          forwarded += chunk.length;
          res.write(chunk);
        });
        upRes.on('end', () => {
          if (req.method === 'GET') gets.push({ range: req.headers.range, bytes: n });
          res.end();
        });
      },
    );
    up.on('error', () => res.socket?.destroy());
    req.pipe(up);
  });
  const url = await listen(server);
  const proxy: Proxy = {
    url,
    bytesForwarded: () => forwarded,
    requests: () => requests,
    gets,
    get truncateTo() { return state.truncateTo; },
    set truncateTo(v) { state.truncateTo = v; },
    reset() {
      forwarded = 0;
      requests = 0;
      gets.length = 0;
    },
    close: closer(server),
  };
  return proxy;
}

export function joinUrl(base: string, ...parts: string[]): string {
  return [base.replace(/\/+$/, ''), ...parts].join('/');
}

export { join };

/**
 * A MindSpore-layout checkpoint directory written with the .ckpt record builder: `rank_<r>/net.ckpt`
 * with `records` float32 tensors of `elements` each (values derived from rank and record, so every
 * byte is checkable). Returns the tensor names.
 */
export async function makeCheckpointDir(dir: string, opts: { ranks: number; records: number; elements: number }): Promise<string[]> {
  const { ckptRecord } = await import('../../core/ckpt/record-builder.js');
  const { mkdir, writeFile } = await import('node:fs/promises');
  const names = Array.from({ length: opts.records }, (_, i) => `net.layer${String(i).padStart(4, '0')}.weight`);
  for (let r = 0; r < opts.ranks; r++) {
    await mkdir(join(dir, `rank_${r}`), { recursive: true });
    const parts = names.map((name, i) => {
      const v = new Float32Array(opts.elements);
      for (let k = 0; k < v.length; k++) v[k] = r * 1e6 + i * 1e3 + k;
      return ckptRecord(name, 'float32', [opts.elements], new Uint8Array(v.buffer));
    });
    await writeFile(join(dir, `rank_${r}`, 'net.ckpt'), Buffer.concat(parts));
  }
  return names;
}
