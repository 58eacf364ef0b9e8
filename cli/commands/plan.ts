import { ShardserveError } from '../../core/errors.js';
import { planRank, planToJson, sourceStagesFor } from '../../core/plan/planner.js';
import { CheckpointSource, resolveDestination } from '../../core/reshard/session.js';
import { decryptionFlags, decryptionFrom, formatBytes, intFlag, parseFlags, required, targetFlags, targetFrom } from '../args.js';
import type { Command } from '../main.js';

export const planCommand: Command = {
  name: 'plan',
  summary: 'show which source files and byte ranges one inference rank reads',
  usage: `Usage: shardserve plan --checkpoint <dir|uri> --strategy <file|dir> [--dst-strategy <file> | --world N --stages P --tp T] --rank R [--json]

Computes, for inference rank R, the byte ranges of the training checkpoint files that hold its slice
of every parameter (nothing is read except file headers). Without --dst-strategy or a target, the
destination is a single device (rank 0 holds every full tensor). This is what \`reshard\` writes for R:
values in no strategy (optimizer states, global_step, ...) included, carried whole as MindSpore does.
A serving rank (\`up\`, \`rank\`, \`export\`) reads only the tensors its stage's graph takes.

  --checkpoint <dir|uri>   rank_<N>/ directories of the training checkpoint (path, file://, http(s)://, s3://)
  --strategy <file|dir>    training strategy (.ckpt protobuf or .json; per-stage files or merged)
  --dst-strategy <file>    inference strategy (e.g. from infer_predict_layout or shardserve layout)
  --world N --stages P --tp T   or derive the inference strategy as \`shardserve layout\` does
  --rank R                 inference rank
  --json                   machine-readable: readBytes, sliceBytes, per-file ranges, per-tensor sources
  --key-file <file> | --key-env <VAR>, --dec-mode <AES-GCM|AES-CBC|SM4-CBC>   for encrypted .ckpt files

Example:
  shardserve plan --checkpoint ckpt/ --strategy strategy.ckpt --tp 4 --rank 1 --json
`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      checkpoint: { type: 'string' }, strategy: { type: 'string' }, 'dst-strategy': { type: 'string' }, rank: { type: 'string' }, json: { type: 'boolean' },
      ...targetFlags, ...decryptionFlags,
    });
    const rank = intFlag(required(values.rank, '--rank'), '--rank', 0)!;
    const source = await CheckpointSource.open({ checkpoint: required(values.checkpoint, '--checkpoint'), strategy: required(values.strategy, '--strategy'), decryption: decryptionFrom(values) });
    try {
      const destination = await resolveDestination(source, { dstStrategy: values['dst-strategy'], target: targetFrom(values) });
      if (destination.kind === 'single' && rank !== 0) throw new ShardserveError('BadRank', `--rank ${rank}: a single-device destination has only rank 0 (give --dst-strategy or --world/--stages/--tp)`);
      const { files } = await source.filesOf(sourceStagesFor(source.strategy, destination, rank));
      const plan = planRank({ source: source.strategy, files, destination, rank });
      if (values.json) {
        process.stdout.write(JSON.stringify(planToJson(plan), null, 2) + '\n');
        return 0;
      }
      const lines = [`rank ${plan.rank} (stage ${plan.stage}): ${plan.tensors.length} tensors, slice ${formatBytes(plan.sliceBytes)}, reads ${formatBytes(plan.readBytes)} from ${plan.files.length} file(s) (ratio ${(plan.sliceBytes ? plan.readBytes / plan.sliceBytes : 1).toFixed(3)})`];
      for (const f of plan.files) lines.push(`  ${f.uri}: ${f.ranges.length} range(s), ${formatBytes(f.bytes)}`);
      for (const n of plan.notes) lines.push(`  note: ${n}`);
      process.stdout.write(lines.join('\n') + '\n');
      return 0;
    } finally {
      await source.close();
    }
  },
};
