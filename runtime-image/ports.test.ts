import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { describe, expect, it } from 'vitest';
import { freePort, freePortRange } from './ports.js';

const ephemeralLow = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);

function hold(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(port, '127.0.0.1', () => resolve(s));
  });
}

describe('local ports', () => {
  it('are taken below the ephemeral range, so no outgoing connection can claim one before the rank binds it', async () => {
    for (let i = 0; i < 50; i++) {
      const p = await freePort();
      expect(p).toBeGreaterThanOrEqual(15_000);
      expect(p).toBeLessThan(ephemeralLow);
    }
  });

  it('a block stays inside its partition and partitions do not overlap', async () => {
    const count = 8;
    const width = Math.floor((ephemeralLow - 15_000) / count);
    for (const index of [0, 3, 7]) {
      for (let i = 0; i < 20; i++) {
        const base = await freePortRange(4, '127.0.0.1', { index, count });
        expect(base).toBeGreaterThanOrEqual(15_000 + index * width);
        expect(base + 3).toBeLessThan(15_000 + (index + 1) * width);
      }
    }
  });

  it('never hands out the same port twice in a row and skips ports someone holds', async () => {
    const p = await freePort();
    const held = await Promise.all([hold(p + 1), hold(p + 2)]).catch(() => []);
    try {
      const seen = new Set([p]);
      for (let i = 0; i < 5; i++) {
        const q = await freePort();
        expect(seen.has(q)).toBe(false);
        if (held.length) expect([p + 1, p + 2]).not.toContain(q);
        seen.add(q);
        const s = await hold(q); // it really is free
        await new Promise((r) => s.close(r));
      }
    } finally {
      await Promise.all(held.map((s) => new Promise((r) => s.close(r))));
    }
  });
});
