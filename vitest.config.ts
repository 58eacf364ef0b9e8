import { defineConfig } from 'vitest/config';

// Unit tests sit next to the code they test (`core/**/x.test.ts`); integration and end-to-end
// suites that start real parts (MindSpore venv, S3 server, kube-apiserver) live under `test/`.
export default defineConfig({
  test: {
    include: ['{core,cli,runtime-image,operator,test}/**/*.test.ts'],
    exclude: ['**/node_modules/**'],
    pool: 'forks',
    // onnxruntime's telemetry off in the suites' processes too (as bin/shardserve.mjs keeps it off);
    // the tests of that default remove it from the environment of the ranks they start.
    env: { ORT_DISABLE_TELEMETRY: '1' },
    testTimeout: 60_000,
    hookTimeout: 30 * 60_000, // suites that build real parts (Go binaries, venv) on a new machine
  },
});
