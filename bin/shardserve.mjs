#!/usr/bin/env node
// Entry point. In a checkout: the TypeScript CLI through tsx's loader, so no build step is needed
// after `npm ci`. In the rank image: the JavaScript its build compiled next to each source
// (tsconfig.build.json; runtime-image/Dockerfile), run by node alone: no loader, no transpile cache.
import { existsSync } from 'node:fs';

// onnxruntime (1.29 and later) otherwise writes a device id under ~/.cache/Microsoft and uploads usage
// events from Linux too; shardserve's processes (ranks, `up`, export, the demo) keep it off unless
// the user sets ORT_DISABLE_TELEMETRY themselves (0 turns it back on). Read when the first session
// starts, so setting it here, before anything loads, covers every command and every rank `up` spawns.
process.env.ORT_DISABLE_TELEMETRY ??= '1';

const compiled = new URL('../cli/main.js', import.meta.url);
let main;
if (existsSync(compiled)) {
  ({ main } = await import(compiled.href));
} else {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../cli/main.ts'));
}
process.exitCode = await main(process.argv.slice(2));
