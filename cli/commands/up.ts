import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ShardserveError } from '../../core/errors.js';
import { decryptionFrom, parameterNamesFrom } from '../args.js';
import type { Command } from '../main.js';

const usage = `Usage: shardserve up --model <net.onnx> --checkpoint <dir|uri> --strategy <file|dir>
                     [--world N --stages P --tp T] [--port 8001 --http-port 8000]
                     [--rank-port 7000] [--name NAME] [--cut-tensors a,b] [--ready-timeout SECONDS]
                     [--parameter-names map.json] [--key-file <file> [--dec-mode AES-GCM|AES-CBC|SM4-CBC]]

Runs every rank of the layout as a local process (loopback ports), shows their loading progress,
restarts a rank that dies, and serves the Open Inference Protocol from rank 0: gRPC on --port,
REST on --http-port (/v2/..., /healthz, /readyz, /metrics). Rank k's stage-to-stage port is
--rank-port + k. Ctrl-C or SIGTERM drains requests in flight and stops every rank.
Stages default to the strategy's pipeline stage count; tensor parallel (--tp) must be 1 for now.
--parameter-names: a JSON file {"checkpoint name": "initializer name"} for names that differ.
An encrypted .ckpt checkpoint: --key-file names a file holding the key (16, 24 or 32 bytes, raw or
in hex), which every rank reads itself; the key is never passed on a command line or in the config.
`;

function int(value: string | undefined, flag: string, min: number): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value) || Number(value) < min) throw new ShardserveError('Usage', `${flag} must be an integer ≥ ${min}, got '${value}'`);
  return Number(value);
}

export function parseUpFlags(argv: string[]) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        model: { type: 'string' }, checkpoint: { type: 'string' }, strategy: { type: 'string' },
        world: { type: 'string' }, stages: { type: 'string' }, tp: { type: 'string' },
        port: { type: 'string' }, 'http-port': { type: 'string' }, 'rank-port': { type: 'string' },
        name: { type: 'string' }, 'cut-tensors': { type: 'string' }, 'ready-timeout': { type: 'string' },
        'parameter-names': { type: 'string' }, 'key-file': { type: 'string' }, 'dec-mode': { type: 'string' },
      },
      strict: true,
    }));
  } catch (e) {
    throw new ShardserveError('Usage', (e as Error).message.split('\n')[0]);
  }
  for (const f of ['model', 'checkpoint', 'strategy'] as const) {
    if (!values[f]) throw new ShardserveError('Usage', `--${f} is required`);
  }
  // Read and checked here, so a wrong key file fails before any rank starts; the ranks get its path.
  const key = decryptionFrom({ 'key-file': values['key-file'], 'dec-mode': values['dec-mode'] });
  return {
    model: values.model!, checkpoint: values.checkpoint!, strategy: values.strategy!,
    world: int(values.world, '--world', 1), stages: int(values.stages, '--stages', 1), tp: int(values.tp, '--tp', 1),
    grpcPort: int(values.port, '--port', 0) ?? 8001,
    httpPort: int(values['http-port'], '--http-port', 0) ?? 8000,
    rankPort: int(values['rank-port'], '--rank-port', 1) ?? 7000,
    modelName: values.name ?? 'model',
    cutTensors: values['cut-tensors']?.split(',').map((s) => s.trim()).filter(Boolean),
    readyTimeoutMs: (int(values['ready-timeout'], '--ready-timeout', 1) ?? 600) * 1000,
    parameterNames: parameterNamesFrom(values['parameter-names']),
    decryption: key ? { keyFile: resolve(values['key-file']!), mode: key.mode ?? 'AES-GCM' } : undefined,
  };
}

export const upCommand: Command = {
  name: 'up',
  summary: 'run every rank as a local process plus the OIP front door (no cluster)',
  usage,
  async run(argv) {
    const flags = parseUpFlags(argv);
    // A closed terminal or pipe must not stop the supervisor half-way through stopping its ranks.
    process.stderr.on('error', () => {});
    process.stdout.on('error', () => {});
    const { LocalGroup, progressDisplay, upConfig } = await import('../../runtime-image/up.js');
    const config = await upConfig(flags);
    let display: ReturnType<typeof progressDisplay> | undefined;
    const group = new LocalGroup({ config, log: (l) => (display ? display.log(l) : process.stderr.write(l + '\n')) });
    display = progressDisplay(() => group.view());
    let signalled = false;
    const stop = new Promise<void>((resolve) => {
      const on = () => {
        signalled = true;
        resolve();
      };
      process.once('SIGINT', on);
      process.once('SIGTERM', on);
    });
    group.start();
    try {
      await Promise.race([group.waitReady(flags.readyTimeoutMs, () => display!.tick()), stop]);
      if (!signalled) {
        // Rank 0 answers ready first; give the per-rank view a moment to catch up before drawing it.
        for (let i = 0; i < 20 && group.view().some((v) => v.state !== 'READY'); i++) await new Promise((r) => setTimeout(r, 100));
        display.freeze();
        // Keep reporting changes (a rank dying and coming back) while serving; not redrawn on a TTY.
        const watch = setInterval(() => display!.tick(), 500);
        watch.unref();
        const { grpcPort, httpPort } = config.serving;
        process.stderr.write(`serving model '${config.modelName}' on ${config.parallelism.pipelineStages} stage(s): OIP gRPC 127.0.0.1:${grpcPort}, REST http://127.0.0.1:${httpPort}/v2/models/${config.modelName} (Ctrl-C to stop)\n`);
        await Promise.race([stop, group.failed]);
      }
    } finally {
      process.stderr.write('stopping: draining requests in flight\n');
      await group.stop();
    }
    return 0;
  },
};
