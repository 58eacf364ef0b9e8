import { describe, expect, it } from 'vitest';
import { InformerSet } from './informers.js';
import type { KubeApi } from './kube.js';

// A scripted API for the restart logic only (the real API server is exercised in test/integration).
function scriptedApi(opts: { failListsOf: string; failures: number }) {
  let failed = 0;
  const api = {
    get: async (path: string) => {
      if (path.includes(opts.failListsOf) && failed < opts.failures) {
        failed++;
        throw new Error(`list ${opts.failListsOf} refused (${failed})`);
      }
      return { items: [], metadata: { resourceVersion: '1' } };
    },
    watch: (_path: string, _onEvent: unknown, signal: AbortSignal) => new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve())),
  };
  return api as unknown as KubeApi;
}

describe('InformerSet', () => {
  it('keeps retrying an informer that cannot list, with backoff, and reports it healthy once it syncs', async () => {
    const errors: string[] = [];
    const set = new InformerSet(scriptedApi({ failListsOf: '/statefulsets', failures: 2 }), 'all', {
      onChange: () => {},
      onError: (kind, _ns, e) => errors.push(`${kind}: ${e}`),
    });
    const t0 = Date.now();
    await set.start(10_000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500 + 1000 - 50); // backoff 500 ms, then 1 s
    const h = set.health();
    expect(h.ok).toBe(true);
    expect(h.informers.find((i) => i.kind === 'StatefulSet')).toEqual({ kind: 'StatefulSet', namespace: '*', healthy: true, synced: true });
    expect(errors).toEqual([]); // start() retries itself; onError is for informers that stop later
    await set.stop();
  });

  it('gives up with the last error when an informer cannot sync before the deadline', async () => {
    const set = new InformerSet(scriptedApi({ failListsOf: '/pods', failures: 1000 }), ['team-a'], { onChange: () => {}, onError: () => {} });
    await expect(set.start(800)).rejects.toThrow('informer for Pod in team-a did not sync within 800 ms: list /pods refused');
    expect(set.health().ok).toBe(false);
    await set.stop();
  });

  it('restarts an informer whose watch breaks, and /healthz shows it unhealthy meanwhile', async () => {
    let watches = 0;
    const api = {
      get: async () => ({ items: [], metadata: { resourceVersion: '1' } }),
      watch: (path: string, _e: unknown, signal: AbortSignal) => {
        if (path.includes('/configmaps') && ++watches === 1) return new Promise<void>((_r, reject) => setTimeout(() => reject(new Error('connection reset')), 50));
        return new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve()));
      },
    } as unknown as KubeApi;
    const errors: string[] = [];
    const set = new InformerSet(api, 'all', { onChange: () => {}, onError: (kind, _ns, e) => errors.push(`${kind}: ${(e as Error).message}`) });
    await set.start();
    await new Promise((r) => setTimeout(r, 150));
    expect(errors).toEqual(['ConfigMap: connection reset']);
    expect(set.health().informers.find((i) => i.kind === 'ConfigMap')).toMatchObject({ healthy: false, lastError: 'connection reset' });
    expect(set.health().ok).toBe(false);
    await new Promise((r) => setTimeout(r, 700));
    expect(set.health().ok).toBe(true);
    expect(watches).toBe(2);
    await set.stop();
  });
});
