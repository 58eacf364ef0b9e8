import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { RankMetrics } from '../runtime-image/metrics.js';
import { fetchText, LoadProgressGatherer, MAX_METRICS_BYTES, parseLoadProgress, type HttpGet } from './load-progress.js';
import { pod } from './testing/wrappers.js';

describe('parseLoadProgress', () => {
  it("reads the two gauges from a rank's real /metrics exposition (labels, other metrics around them)", async () => {
    const m = new RankMetrics({ rank: 3, group: 1, stage: 1 }, { defaultMetrics: true });
    m.loadedBytes.set(123456);
    m.totalBytes.set(987654);
    expect(parseLoadProgress(await m.registry.metrics())).toEqual({ loaded: 123456, total: 987654 });
  });

  const garbled: Array<[string, string]> = [
    ['an empty body', ''],
    ['only the total', 'shardserve_load_bytes_total 10\n'],
    ['a value that is not a number', 'shardserve_load_bytes_done abc\nshardserve_load_bytes_total 10\n'],
    ['a negative value', 'shardserve_load_bytes_done -1\nshardserve_load_bytes_total 10\n'],
    ['NaN', 'shardserve_load_bytes_done NaN\nshardserve_load_bytes_total 10\n'],
    ['more loaded than total', 'shardserve_load_bytes_done 11\nshardserve_load_bytes_total 10\n'],
    ['an HTML page', '<html><body>shardserve_load_bytes_done</body></html>'],
    ['a name that only starts like ours', 'shardserve_load_bytes_done_x 1\nshardserve_load_bytes_total_x 2\n'],
  ];
  it.each(garbled)('%s is unknown', (_name, text) => {
    expect(parseLoadProgress(text)).toBeUndefined();
  });

  it('label values with spaces and braces do not confuse it; comments are skipped', () => {
    const text = '# HELP shardserve_load_bytes_done x 1\nshardserve_load_bytes_done{rank="0",note="a } b"} 5 1700000000\nshardserve_load_bytes_total{rank="0"} 9\n';
    expect(parseLoadProgress(text)).toEqual({ loaded: 5, total: 9 });
  });
});

/** A fake rank network: ip → body, or an error; records every URL asked. */
function fakeRanks(bodies: Record<string, string | Error>, delayMs = 0) {
  const asked: string[] = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const get: HttpGet = async (url, deadlineMs) => {
    asked.push(`${url} ${deadlineMs}`);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    await new Promise((r) => setTimeout(r, delayMs));
    inFlight--;
    const b = bodies[new URL(url).hostname.replace(/^\[|\]$/g, '')];
    if (b === undefined) throw new Error('connect ECONNREFUSED');
    if (b instanceof Error) throw b;
    return b;
  };
  return { get, asked, maxInFlight: () => maxInFlight };
}
const gauges = (loaded: number, total: number) => `shardserve_load_bytes_done ${loaded}\nshardserve_load_bytes_total ${total}\n`;

describe('LoadProgressGatherer', () => {
  it('asks only ranks that run, have an address and are not Ready, at http://<podIP>:<httpPort>/metrics with the deadline', async () => {
    const net = fakeRanks({ '10.0.0.0': gauges(1, 2), '10.0.0.1': gauges(3, 4), 'fd00::5': gauges(5, 6) });
    const g = new LoadProgressGatherer({ get: net.get, deadlineMs: 750 });
    const pods = [
      pod('llm', 0, 0, 'r').loading().build(),
      pod('llm', 0, 1, 'r').ready('10.0.0.1').build(),
      pod('llm', 0, 2, 'r').build(), // pending, no address
      pod('llm', 0, 3, 'r').loading('fd00::5').build(),
      pod('llm', 0, 4, 'r').loading('10.0.0.1').deleting().build(),
    ];
    const got = await g.gather('ns/llm', pods, 8123);
    expect(net.asked.sort()).toEqual(['http://10.0.0.0:8123/metrics 750', 'http://[fd00::5]:8123/metrics 750']);
    expect(got).toEqual(new Map([['llm-g0-0', { loaded: 1, total: 2 }], ['llm-g0-3', { loaded: 5, total: 6 }]]));
  });

  it('an unreachable, failing or garbled rank is unknown and never throws', async () => {
    const net = fakeRanks({ '10.0.0.1': new Error('HTTP 500'), '10.0.0.2': 'garbage' });
    const g = new LoadProgressGatherer({ get: net.get });
    const pods = [0, 1, 2].map((k) => pod('llm', 0, k, 'r').loading(`10.0.0.${k}`).build());
    expect(await g.gather('ns/llm', pods, 8000)).toEqual(new Map());
    expect(net.asked).toHaveLength(3);
  });

  it('remembers the last answer: a failed probe keeps it, a rank that became Ready keeps its slice, a gone pod is forgotten', async () => {
    const bodies: Record<string, string | Error> = { '10.0.0.0': gauges(40, 100) };
    const net = fakeRanks(bodies);
    const g = new LoadProgressGatherer({ get: net.get });
    const loading = pod('llm', 0, 0, 'r').loading().build();
    expect(await g.gather('ns/llm', [loading], 8000)).toEqual(new Map([['llm-g0-0', { loaded: 40, total: 100 }]]));
    bodies['10.0.0.0'] = new Error('timeout');
    expect(await g.gather('ns/llm', [loading], 8000)).toEqual(new Map([['llm-g0-0', { loaded: 40, total: 100 }]]));
    const ready = pod('llm', 0, 0, 'r').ready('10.0.0.0').build();
    expect(await g.gather('ns/llm', [ready], 8000)).toEqual(new Map([['llm-g0-0', { loaded: 40, total: 100 }]]));
    expect(net.asked).toHaveLength(2);
    expect(await g.gather('ns/llm', [], 8000)).toEqual(new Map());
    expect(await g.gather('ns/llm', [ready], 8000)).toEqual(new Map());
  });

  it('a recreated pod (same name, new uid) starts unknown', async () => {
    const net = fakeRanks({ '10.0.0.0': gauges(40, 100) });
    const g = new LoadProgressGatherer({ get: net.get });
    await g.gather('ns/llm', [pod('llm', 0, 0, 'old').loading().build()], 8000);
    expect(await g.gather('ns/llm', [pod('llm', 0, 0, 'new').build()], 8000)).toEqual(new Map());
  });

  it('keeps at most `concurrency` requests in flight', async () => {
    const bodies = Object.fromEntries(Array.from({ length: 20 }, (_, k) => [`10.0.0.${k}`, gauges(k, 100)]));
    const net = fakeRanks(bodies, 5);
    const g = new LoadProgressGatherer({ get: net.get, concurrency: 3 });
    const pods = Array.from({ length: 20 }, (_, k) => pod('llm', 0, k, 'r').loading(`10.0.0.${k}`).build());
    const got = await g.gather('ns/llm', pods, 8000);
    expect(got.size).toBe(20);
    expect(got.get('llm-g0-7')).toEqual({ loaded: 7, total: 100 });
    expect(net.maxInFlight()).toBe(3);
  });
});

describe('fetchText (the default getter) against a real loopback HTTP server', () => {
  const serve = async (handler: (req: IncomingMessage, res: ServerResponse) => void) => {
    const server = createServer(handler);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/metrics`, close: () => new Promise((r) => server.close(r)) };
  };

  it('returns the body of a 200 answer', async () => {
    const s = await serve((_req, res) => res.end(gauges(1, 2)));
    try {
      expect(parseLoadProgress(await fetchText(s.url, 1000))).toEqual({ loaded: 1, total: 2 });
    } finally {
      await s.close();
    }
  });

  const failures: Array<[string, (req: IncomingMessage, res: ServerResponse) => void, RegExp]> = [
    ['a non-200 answer', (_req, res) => { res.statusCode = 503; res.end('loading'); }, /HTTP 503/],
    ['an answer over the size cap', (_req, res) => res.end(Buffer.alloc(MAX_METRICS_BYTES + 1, 0x61)), /larger than 1048576 bytes/],
    ['no answer before the deadline', () => {}, /abort|timeout/i],
  ];
  it.each(failures)('rejects %s', async (_name, handler, message) => {
    const s = await serve(handler);
    try {
      await expect(fetchText(s.url, 300)).rejects.toThrow(message);
    } finally {
      s.close();
    }
  });
});
