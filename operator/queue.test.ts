import { describe, expect, it } from 'vitest';
import { WorkQueue } from './queue.js';

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));

describe('WorkQueue', () => {
  it('merges repeats of a waiting key into one reconcile', async () => {
    const seen: string[] = [];
    const q = new WorkQueue({ workers: 1, handle: async (k) => {
      seen.push(k);
      await tick(10);
    } });
    q.add('ns/busy'); // occupies the one worker, so the rest wait
    q.add('ns/a');
    q.add('ns/b');
    q.add('ns/a');
    q.add('ns/b');
    await q.idle();
    expect(seen).toEqual(['ns/busy', 'ns/a', 'ns/b']);
  });

  it('never runs one key on two workers; a key added while running runs once more afterwards', async () => {
    let running = 0;
    let maxRunning = 0;
    let runs = 0;
    const q = new WorkQueue({
      workers: 4,
      handle: async () => {
        running++;
        runs++;
        maxRunning = Math.max(maxRunning, running);
        await tick(20);
        running--;
      },
    });
    q.add('ns/a');
    await tick();
    q.add('ns/a');
    q.add('ns/a');
    await q.idle();
    expect([maxRunning, runs]).toEqual([1, 2]);
  });

  it('retries a failing key with backoff until it succeeds', async () => {
    let attempts = 0;
    const errors: string[] = [];
    const q = new WorkQueue({
      workers: 1,
      baseBackoffMs: 5,
      handle: async () => {
        if (++attempts < 3) throw new Error(`attempt ${attempts}`);
      },
      onError: (_k, e) => errors.push((e as Error).message),
    });
    q.add('ns/a');
    for (let i = 0; i < 100 && attempts < 3; i++) await tick(5);
    await q.idle();
    expect(attempts).toBe(3);
    expect(errors).toEqual(['attempt 1', 'attempt 2']);
  });

  it('reports its depth (waiting + running keys)', async () => {
    const q = new WorkQueue({ workers: 1, handle: async () => void (await tick(10)) });
    q.add('a');
    q.add('b');
    expect(q.depth).toBe(2);
    await q.idle();
    expect(q.depth).toBe(0);
  });
});
