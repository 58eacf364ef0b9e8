import { status } from '@grpc/grpc-js';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mlpNetwork } from '../../core/onnx/sample-networks.js';
import { LocalGroup } from '../../runtime-image/local-group.js';
import { call, oipClient, type OipClient } from './serve-client.js';
import { fixtureConfig, singleDeviceOutputs, writeServeFixture } from './serve-fixture.js';
import { freePortBlock, freePorts } from '../harness/ports.js';
import { bytesOf } from './serve-models.js';

// Real rank processes under `shardserve up`'s supervisor. The network is big enough (tens of ms per
// request) that requests really are in flight inside a stage when it is killed.
const net = mlpNetwork([256, 1024, 1024, 1024, 16]);
const BATCH = 32;
const input = net.sampleInput(BATCH).x;
const request = () => ({ model_name: 'net', inputs: [{ name: 'x', datatype: 'FP32', shape: input.dims }], raw_input_contents: [Buffer.from(input.data.buffer)] });
const DEADLINE_MS = 8_000;

let group: LocalGroup;
let client: OipClient;
let httpBase: string;
let expected: Buffer;

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  while (Date.now() - t0 < timeoutMs) {
    if (await check().catch(() => false)) return Date.now() - t0;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}
const readyz = async () => (await fetch(`${httpBase}/readyz`, { signal: AbortSignal.timeout(1000) })).status;

beforeAll(async () => {
  const fixture = writeServeFixture(mkdtempSync(join(tmpdir(), 'faults-')), net, 2);
  const [grpc, http] = await freePorts(2);
  const rank = await freePortBlock(2);
  httpBase = `http://127.0.0.1:${http}`;
  group = new LocalGroup({ config: fixtureConfig(fixture, { grpc, http, rank }), log: () => {} });
  group.start();
  await group.waitReady(120_000);
  client = oipClient(`127.0.0.1:${grpc}`);
  expected = bytesOf((await singleDeviceOutputs(net, { x: new ort.Tensor('float32', input.data, input.dims) })).y);
}, 180_000);

afterAll(async () => {
  client?.close();
  await group?.stop(5_000);
});

describe('a stage process dies with requests in flight', () => {
  it('fails those requests fast with UNAVAILABLE, drops readiness, restarts the rank and serves again', async () => {
    // Keep 8 requests in flight continuously; kill the last stage in the middle.
    const outcomes: Array<{ ok: boolean; code?: number; details?: string; ms: number; bitwise?: boolean }> = [];
    let running = true;
    const worker = async () => {
      while (running) {
        const t0 = Date.now();
        try {
          const r = await call(client, 'ModelInfer', request(), DEADLINE_MS);
          outcomes.push({ ok: true, ms: Date.now() - t0, bitwise: Buffer.compare(r.raw_output_contents[0], expected) === 0 });
        } catch (e: any) {
          outcomes.push({ ok: false, code: e.code, details: e.details, ms: Date.now() - t0 });
          if (outcomes.filter((o) => !o.ok).length > 50) await new Promise((r) => setTimeout(r, 20));
        }
      }
    };
    const workers = Array.from({ length: 8 }, worker);
    await waitFor('some successful requests', async () => outcomes.filter((o) => o.ok).length >= 8, 30_000);
    const okBefore = outcomes.length;
    const victim = group.pid(1)!;
    process.kill(victim, 'SIGKILL');
    const dropMs = await waitFor('readiness to drop', async () => (await readyz()) === 503, 5_000);
    await waitFor('readiness to return after the restart', async () => (await readyz()) === 200, 120_000);
    expect(group.pid(1)).not.toBe(victim);
    running = false;
    await Promise.all(workers);

    const failures = outcomes.slice(okBefore).filter((o) => !o.ok);
    expect(failures.length, 'requests in flight during the kill must fail').toBeGreaterThan(0);
    for (const f of failures) {
      expect({ code: f.code, details: f.details }).toMatchObject({ code: status.UNAVAILABLE, details: expect.stringMatching(/stage 1 .*(unreachable|not connected)|not ready/) });
      expect(f.ms, 'no request waits for a dead stage until its deadline').toBeLessThan(DEADLINE_MS / 2);
    }
    expect(dropMs).toBeLessThan(5_000);
    for (const o of outcomes.filter((x) => x.ok)) expect(o.bitwise).toBe(true);

    // Healed: requests succeed again with the exact result.
    for (let i = 0; i < 5; i++) {
      const r = await call(client, 'ModelInfer', request(), DEADLINE_MS);
      expect(Buffer.compare(r.raw_output_contents[0], expected)).toBe(0);
    }
  }, 180_000);
});

describe('deadlines', () => {
  it('answer DEADLINE_EXCEEDED on time and spend no compute on requests whose deadline passed while queued', async () => {
    const computed = async () => {
      const text = await (await fetch(`${httpBase}/metrics`)).text();
      return Number(/^shardserve_stage_compute_seconds_count\{[^}]*stage="0"[^}]*\} (\d+)/m.exec(text)?.[1]);
    };
    // Time one request to size the burst: 24 queued requests take far longer than the deadline.
    const t0 = Date.now();
    await call(client, 'ModelInfer', request(), DEADLINE_MS);
    const one = Math.max(5, Date.now() - t0);
    const deadline = 3 * one;
    const before = await computed();
    const results = await Promise.all(Array.from({ length: 24 }, () => {
      const s = Date.now();
      return call(client, 'ModelInfer', request(), deadline).then(
        () => ({ ok: true, code: 0, ms: Date.now() - s }),
        (e) => ({ ok: false, code: e.code as number, ms: Date.now() - s }),
      );
    }));
    const late = results.filter((r) => !r.ok);
    expect(late.length, 'most of the burst misses its deadline').toBeGreaterThan(12);
    for (const r of late) {
      expect(r.code).toBe(status.DEADLINE_EXCEEDED);
      // gRPC's client gives up at the deadline; the server must not make it wait longer either.
      expect(r.ms).toBeLessThan(deadline + 2_000);
    }
    // Requests that expired while queued were dropped at stage 0, not computed.
    await new Promise((r) => setTimeout(r, 4 * deadline));
    expect((await computed()) - before).toBeLessThan(24);
    // And the pipeline still answers exactly afterwards.
    const r = await call(client, 'ModelInfer', request(), DEADLINE_MS);
    expect(Buffer.compare(r.raw_output_contents[0], expected)).toBe(0);
  }, 120_000);
});

describe('SIGTERM', () => {
  it('drains: requests already in flight finish with their results, then every rank exits', async () => {
    const inflight = Array.from({ length: 48 }, () => call(client, 'ModelInfer', request(), 60_000).then(
      (r) => ({ ok: true, bitwise: Buffer.compare(r.raw_output_contents[0], expected) === 0 }),
      (e) => ({ ok: false, code: e.code, details: e.details }),
    ));
    // Wait until they reach the server (they queue on the stage sessions), then stop the group.
    const queued = async () => Number(/^shardserve_inflight_requests\{[^}]*\} (\d+)/m.exec(await (await fetch(`${httpBase}/metrics`)).text())?.[1]);
    await waitFor('requests in flight at the front door', async () => (await queued()) >= 4, 20_000);
    const accepted = await queued();
    const pids = [group.pid(0)!, group.pid(1)!];
    const stopped = group.stop(30_000);
    const results = await Promise.all(inflight);
    await stopped;
    // Every request the front door had accepted finishes with its exact result; a request that only
    // arrives after SIGTERM is refused at once as UNAVAILABLE (draining), never dropped or hung.
    const refused = { ok: false, code: status.UNAVAILABLE, details: "model 'net' is not ready: draining (received SIGTERM)" };
    for (const r of results) expect([{ ok: true, bitwise: true }, refused]).toContainEqual(r);
    expect(results.filter((r) => r.ok).length).toBeGreaterThanOrEqual(accepted);
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
  }, 120_000);
});
