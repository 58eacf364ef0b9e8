import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

// Ports for a local group are probed, released, then bound again by the rank that uses them. A port
// taken with listen(0) comes from the kernel's ephemeral range, the same pool every outgoing
// connection draws its local port from, so between the probe and the real bind any connect() on the
// machine may take it (EADDRINUSE). We therefore hand out ports *below* the ephemeral range, walking
// a cursor so one process never hands out the same port twice, and within an optional partition so
// parallel processes that share the scheme (test workers) never pick the same one.

const LOWEST = 15_000; // clear of the 10250–10259 family kubelet and friends bind by default

function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    if (Number.isInteger(low) && low > LOWEST + 1024) return low;
  } catch {
    // not Linux: IANA's dynamic range starts at 49152
  }
  return 49_152;
}

export interface PortPartition {
  /** 0-based slot of this process among `count` that allocate side by side. */
  index: number;
  count: number;
}

let cursor: { lo: number; hi: number; next: number; key: string } | undefined;

function window(partition?: PortPartition): { lo: number; hi: number } {
  const top = ephemeralLow();
  if (!partition) return { lo: LOWEST, hi: top };
  const width = Math.floor((top - LOWEST) / partition.count);
  const lo = LOWEST + (partition.index % partition.count) * width;
  return { lo, hi: lo + width };
}

/** `n` consecutive port numbers from this process's cursor (wrapping within its window). */
function take(n: number, partition?: PortPartition): number {
  const key = partition ? `${partition.index}/${partition.count}` : '';
  if (!cursor || cursor.key !== key) {
    const { lo, hi } = window(partition);
    cursor = { lo, hi, next: lo + Math.floor(Math.random() * (hi - lo)), key };
  }
  if (cursor.next + n > cursor.hi) cursor.next = cursor.lo;
  const base = cursor.next;
  cursor.next += n;
  return base;
}

function tryListen(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, host, () => s.close(() => resolve(true)));
  });
}

/** The first of `n` consecutive free ports (rank k listens on base + k), below the ephemeral range. */
export async function freePortRange(n: number, host = '127.0.0.1', partition?: PortPartition): Promise<number> {
  for (let attempt = 0; attempt < 256; attempt++) {
    const base = take(n, partition);
    let ok = true;
    for (let i = 0; i < n && ok; i++) ok = await tryListen(base + i, host);
    if (ok) return base;
  }
  throw new Error(`no ${n} consecutive free ports on ${host} below the ephemeral range`);
}

/** A free port below the ephemeral range (probed, then released for the caller to bind). */
export async function freePort(host = '127.0.0.1', partition?: PortPartition): Promise<number> {
  return freePortRange(1, host, partition);
}
