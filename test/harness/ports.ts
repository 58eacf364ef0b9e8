// Loopback ports for tests. Every suite file runs in its own vitest worker, and several run at once:
// each worker takes ports from its own slice of the range below the kernel's ephemeral ports, so no
// other worker and no outgoing connection can take a port between our probe and the real bind.
import { freePortRange, type PortPartition } from '../../runtime-image/ports.js';

const WORKER_SLICES = 8;

function partition(): PortPartition {
  const id = Number(process.env.VITEST_POOL_ID ?? 0);
  return { index: Number.isInteger(id) && id >= 0 ? id : 0, count: WORKER_SLICES };
}

/** One free loopback port. */
export function freePort(): Promise<number> {
  return freePortRange(1, '127.0.0.1', partition());
}

/** `n` free loopback ports (not necessarily consecutive). */
export async function freePorts(n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await freePort());
  return out;
}

/** A consecutive block of free ports starting at the returned one (for `{port}` = base + rank). */
export function freePortBlock(n: number): Promise<number> {
  return freePortRange(n, '127.0.0.1', partition());
}
