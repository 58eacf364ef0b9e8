import { defineConfig } from 'vitest/config';

// Unit tests sit next to the code they test (`core/**/x.test.ts`); integration and end-to-end
// suites that start real parts (MindSpore venv, S3 server, kube-apiserver) live under `test/`.
export default defineConfig({
  test: {
    include: ['{core,cli,runtime-image,operator,test}/**/*.test.ts'],
    exclude: ['**/node_modules/**'],
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 30 * 60_000, // suites that build real parts (Go binaries, venv) on a new machine
  },
});
