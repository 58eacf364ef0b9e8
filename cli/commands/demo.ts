import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { ShardserveError } from '../../core/errors.js';
import type { Command } from '../main.js';

const EXAMPLES = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', 'examples');

export const demoCommand: Command = {
  name: 'demo',
  summary: 'serve examples/ on 2 pipeline stages, send one OIP request, check it against single-device onnxruntime',
  usage: `Usage: shardserve demo [--examples <dir>] [--deadline SECONDS]

What \`npm start\` runs: starts every rank of examples/ (a MindSpore-trained network and its sharded
checkpoint) as local processes, waits until they are ready, sends the sample request through the Open
Inference Protocol gRPC endpoint, prints the prediction and whether it equals single-device
onnxruntime on the merged model bit for bit, then stops the ranks. Exit 0 when equal, 1 otherwise.
Everything must finish within --deadline (default 180 s).
`,
  async run(argv) {
    let values;
    try {
      ({ values } = parseArgs({ args: argv, options: { examples: { type: 'string' }, deadline: { type: 'string' } }, strict: true }));
    } catch (e) {
      throw new ShardserveError('Usage', (e as Error).message.split('\n')[0]);
    }
    const deadline = values.deadline === undefined ? 180 : Number(values.deadline);
    if (!Number.isFinite(deadline) || deadline <= 0) throw new ShardserveError('Usage', `--deadline must be a positive number of seconds, got '${values.deadline}'`);
    const out = (l: string) => process.stdout.write(l + '\n');
    const { runDemo } = await import('../../runtime-image/demo.js');
    const r = await runDemo({ examplesDir: values.examples ?? EXAMPLES, deadlineMs: deadline * 1000, log: out });
    out('');
    out(`prediction (${r.outputName}): [${r.prediction.map((v) => v.toFixed(6)).join(', ')}]`);
    out(`predicted class: ${r.argmax}   (pipeline of ${r.stages} stages, ${r.latencyMs.toFixed(1)} ms)`);
    out(r.bitwiseEqual
      ? 'equals single-device onnxruntime on the merged model: yes (bitwise)'
      : `equals single-device onnxruntime on the merged model: NO (max abs difference ${r.maxAbsDiff})`);
    return r.bitwiseEqual ? 0 : 1;
  },
};
