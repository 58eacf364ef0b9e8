import { rename, writeFile } from 'node:fs/promises';
import { ShardserveError } from '../../core/errors.js';
import { deriveInferenceStrategy, resolveTarget } from '../../core/layout/derive.js';
import { CheckpointSource, loadStrategy } from '../../core/reshard/session.js';
import { strategyToJson } from '../../core/strategy/writer.js';
import { decryptionFlags, decryptionFrom, parseFlags, required, targetFlags, targetFrom } from '../args.js';
import type { Command } from '../main.js';

export const layoutCommand: Command = {
  name: 'layout',
  summary: 'derive the inference strategy (MindSpore JSON) for a target world from the training strategy',
  usage: `Usage: shardserve layout --strategy <file|dir> [--world N] [--stages P] [--tp T] --out <predict.json> [--checkpoint <dir|uri> [key options]]

Derives the inference layout (what MindSpore's infer_predict_layout gives for pure tensor
parallelism) and writes it as a MindSpore JSON strategy file.

  --strategy <file|dir>   training strategy: .ckpt (protobuf) or .json, per-stage files or a merged file
  --world N               inference ranks (N = P × T)
  --stages P              pipeline stages: the training stage count (default) or 1
  --tp T                  tensor-parallel ranks per stage (default N / P)
  --out <file.json>       where to write the strategy (written to a temp name, then renamed)
  --checkpoint <dir|uri>  read full shapes from the checkpoint when the strategy lacks them (protobuf)
  --key-file <file> | --key-env <VAR>, --dec-mode <AES-GCM|AES-CBC|SM4-CBC>   for an encrypted .ckpt checkpoint

Rule: each parameter keeps the dim training split for model parallelism (the one with the most
parts) with T parts when T divides it, else the next split dim, else it is replicated.

Example:
  shardserve layout --strategy strategy/ --stages 2 --tp 4 --out predict.json
`,
  async run(argv) {
    const { values } = parseFlags(argv, { strategy: { type: 'string' }, out: { type: 'string' }, checkpoint: { type: 'string' }, ...targetFlags, ...decryptionFlags });
    const strategyUri = required(values.strategy, '--strategy');
    const out = required(values.out, '--out');
    if (!out.endsWith('.json')) throw new ShardserveError('Usage', `--out ${out}: the inference strategy is written as MindSpore JSON, so the name must end in .json`);
    const decryption = decryptionFrom(values);
    if (decryption && !values.checkpoint) throw new ShardserveError('Usage', 'a key is only read with --checkpoint (the strategy is never encrypted)');
    const given = targetFrom(values);
    if (!given) throw new ShardserveError('Usage', 'give the inference world: --tp T (and optionally --stages P), or --world N');
    let training;
    let shapes = new Map<string, number[]>();
    if (values.checkpoint) {
      const source = await CheckpointSource.open({ checkpoint: values.checkpoint, strategy: strategyUri, decryption });
      try {
        training = source.strategy;
        shapes = await source.fullShapes();
      } finally {
        await source.close();
      }
    } else {
      training = await loadStrategy(strategyUri);
    }
    const target = resolveTarget(training, given);
    const derived = deriveInferenceStrategy(training, target, shapes, out);
    const tmp = `${out}.tmp-${process.pid}`;
    await writeFile(tmp, strategyToJson(derived));
    await rename(tmp, out);
    let split = 0;
    for (const p of derived.params.values()) if ([...p.layoutByStage.values()].some((l) => l.tensorMap.some((m) => m !== -1))) split++;
    process.stdout.write(`wrote ${out}: ${target.stages} stage(s) × ${target.tp} rank(s), ${derived.params.size} parameters (${split} split, ${derived.params.size - split} replicated)\n`);
    return 0;
  },
};
