import { describe, expect, it } from 'vitest';
import { CancelSource } from './cancel.js';

describe('CancelSource', () => {
  it('calls each listener once, in order, on the first abort only', () => {
    const c = new CancelSource();
    const calls: string[] = [];
    const a = () => calls.push('a');
    c.addEventListener('abort', a);
    c.addEventListener('abort', () => calls.push('b'), { once: true });
    expect(c.signal.aborted).toBe(false);
    c.abort();
    c.abort();
    expect(c.signal.aborted).toBe(true);
    expect(calls).toEqual(['a', 'b']);
  });

  it('does not call a removed listener, nor one added after the abort', () => {
    const c = new CancelSource();
    const calls: string[] = [];
    const a = () => calls.push('a');
    c.addEventListener('abort', a);
    c.addEventListener('abort', () => calls.push('b'));
    c.removeEventListener('abort', a);
    c.removeEventListener('abort', () => undefined); // unknown: no effect
    c.abort();
    c.addEventListener('abort', () => calls.push('late'));
    c.abort();
    expect(calls).toEqual(['b']);
  });
});
