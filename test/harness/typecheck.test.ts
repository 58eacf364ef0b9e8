import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect, it } from 'vitest';

// vitest runs TypeScript without checking its types; `npm test` checks them here (strict tsconfig,
// every folder: product, tests, benchmarks, examples), so a type error fails CI like a failed test.
const ROOT = join(import.meta.dirname, '..', '..');

it('type-checks the whole repository (tsc --noEmit, strict)', () => {
  const r = spawnSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '-p', ROOT], { encoding: 'utf8', timeout: 120_000 });
  expect(r.stdout + r.stderr).toBe('');
  expect(r.status).toBe(0);
}, 150_000);
