import { createServer } from 'node:net';

function tryListen(port: number, host: string): Promise<number | undefined> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(undefined));
    s.listen(port, host, () => {
      const p = (s.address() as import('node:net').AddressInfo).port;
      s.close(() => resolve(p));
    });
  });
}

/** A free loopback port (probed, then released; good enough for a local group on one host). */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const p = await tryListen(0, host);
  if (p === undefined) throw new Error(`no free port on ${host}`);
  return p;
}

/** The first of `n` consecutive free ports (rank k listens on base + k). Bounded tries. */
export async function freePortRange(n: number, host = '127.0.0.1'): Promise<number> {
  for (let attempt = 0; attempt < 64; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000);
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = (await tryListen(base + i, host)) !== undefined;
    if (ok) return base;
  }
  throw new Error(`no ${n} consecutive free ports on ${host}`);
}
