#!/usr/bin/env node
// `npm test`: make sure the real parts the suites need exist (built or installed once, then cached),
// run every suite with vitest, and end with `N passed, N failed` from vitest's JSON report.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, existsSync } from 'node:fs';

const args = process.argv.slice(2);
const run = (cmd, argv) => spawnSync(cmd, argv, { stdio: 'inherit', env: process.env }).status ?? 1;

if (!process.env.SHARDSERVE_SKIP_PREPARE) {
  const status = run('npx', ['tsx', 'test/harness/prepare.ts']);
  if (status !== 0) {
    console.error('npm test: preparing the test bed failed (see above); no suite was run.');
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
}

mkdirSync('test-results', { recursive: true });
const report = 'test-results/report.json';
const status = run('npx', ['vitest', 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${report}`, ...args]);
if (existsSync(report)) {
  const r = JSON.parse(readFileSync(report, 'utf8'));
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed` + (r.numPendingTests ? `, ${r.numPendingTests} skipped` : ''));
}
process.exit(status);
