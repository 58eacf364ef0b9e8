import { ShardserveError } from '../../core/errors.js';
import { reshardCheckpoint } from '../../core/reshard/write.js';
import { decryptionFlags, decryptionFrom, formatBytes, parseFlags, required, targetFlags, targetFrom } from '../args.js';
import { createProgress } from '../progress.js';
import type { Command } from '../main.js';

export function outputFormat(value: string | undefined): 'safetensors' | 'mindspore-ckpt' | undefined {
  if (value === undefined) return undefined;
  if (value === 'safetensors') return 'safetensors';
  if (value === 'ckpt') return 'mindspore-ckpt';
  throw new ShardserveError('Usage', `--format must be safetensors or ckpt, got '${value}'`);
}

export const reshardCommand: Command = {
  name: 'reshard',
  summary: 'write each inference rank its own checkpoint file, reading only the bytes it needs',
  usage: `Usage: shardserve reshard --checkpoint <dir|uri> --strategy <file|dir> (--dst-strategy <file> | --world N --stages P --tp T)
                         --out <dir> [--format safetensors|ckpt] [--crc] [--json]

Writes <out>/rank_<r>/model.safetensors (or model.ckpt) for every inference rank. Every rank is
planned before anything is written, and files appear only when all succeeded.

  --checkpoint <dir|uri>   rank_<N>/ directories of the training checkpoint
  --strategy <file|dir>    training strategy (.ckpt protobuf or .json; per-stage or merged)
  --dst-strategy <file>    inference strategy (infer_predict_layout's, or shardserve layout's)
  --world N --stages P --tp T   or derive it as \`shardserve layout\` does
  --out <dir>              output directory
  --format safetensors|ckpt     output format (default safetensors); ckpt loads in MindSpore
  --verify-crc             verify the source files' CRC (reads each whole file once more)
  --crc                    add MindSpore's crc_num (ckpt trailer / safetensors metadata)
  --json                   print per-rank results as JSON (no progress bar)
  --key-file <file> | --key-env <VAR>, --dec-mode <AES-GCM|AES-CBC|SM4-CBC>   for encrypted .ckpt files

Example:
  shardserve reshard --checkpoint ckpt/ --strategy strategy.ckpt --world 4 --tp 4 --out serve/
`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      checkpoint: { type: 'string' }, strategy: { type: 'string' }, 'dst-strategy': { type: 'string' }, out: { type: 'string' },
      format: { type: 'string' }, crc: { type: 'boolean' }, 'verify-crc': { type: 'boolean' }, json: { type: 'boolean' }, ...targetFlags, ...decryptionFlags,
    });
    const target = targetFrom(values);
    if (!values['dst-strategy'] && !target) throw new ShardserveError('Usage', 'give --dst-strategy <file> or --world/--stages/--tp (use `merge` for a single device)');
    const progress = createProgress('reshard', { json: values.json });
    const written = await reshardCheckpoint({
      checkpoint: required(values.checkpoint, '--checkpoint'),
      strategy: required(values.strategy, '--strategy'),
      dstStrategy: values['dst-strategy'],
      target,
      out: required(values.out, '--out'),
      format: outputFormat(values.format),
      crc: values.crc,
      verifyCrc: values['verify-crc'],
      decryption: decryptionFrom(values),
      onProgress: progress.update,
    });
    progress.finish();
    if (values.json) process.stdout.write(JSON.stringify({ ranks: written }, null, 2) + '\n');
    else for (const w of written) process.stdout.write(`rank ${w.rank} (stage ${w.stage}): ${w.path}  ${formatBytes(w.sliceBytes)} (read ${formatBytes(w.readBytes)})\n`);
    return 0;
  },
};
