import { mergeCheckpoint } from '../../core/reshard/write.js';
import { decryptionFlags, decryptionFrom, formatBytes, parseFlags, required } from '../args.js';
import { createProgress } from '../progress.js';
import type { Command } from '../main.js';
import { outputFormat } from './reshard.js';

export const mergeCommand: Command = {
  name: 'merge',
  summary: 'merge a sharded checkpoint into full tensors for a single device',
  usage: `Usage: shardserve merge --checkpoint <dir|uri> --strategy <file|dir> --out <file.safetensors|file.ckpt> [--format safetensors|ckpt] [--crc] [--json]

Single-device inference from a distributed checkpoint (MindSpore's predict_strategy=None): every
parameter as its full tensor, plus values in no strategy (global_step, ...), in one file written to a
temp name and renamed.

  --checkpoint <dir|uri>   rank_<N>/ directories of the training checkpoint
  --strategy <file|dir>    training strategy (.ckpt protobuf or .json; per-stage or merged)
  --out <file>             output file; .safetensors or .ckpt picks the format
  --format safetensors|ckpt     must agree with the extension when both are given
  --verify-crc             verify the source files' CRC (reads each whole file once more)
  --crc                    add MindSpore's crc_num
  --json                   print the result as JSON
  --key-file <file> | --key-env <VAR>, --dec-mode <AES-GCM|AES-CBC|SM4-CBC>   for encrypted .ckpt files

Example:
  shardserve merge --checkpoint ckpt/ --strategy strategy/ --out merged.safetensors
`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      checkpoint: { type: 'string' }, strategy: { type: 'string' }, out: { type: 'string' }, format: { type: 'string' },
      crc: { type: 'boolean' }, 'verify-crc': { type: 'boolean' }, json: { type: 'boolean' }, ...decryptionFlags,
    });
    const progress = createProgress('merge', { json: values.json });
    const written = await mergeCheckpoint({
      checkpoint: required(values.checkpoint, '--checkpoint'),
      strategy: required(values.strategy, '--strategy'),
      out: required(values.out, '--out'),
      format: outputFormat(values.format),
      crc: values.crc,
      verifyCrc: values['verify-crc'],
      decryption: decryptionFrom(values),
      onProgress: progress.update,
    });
    progress.finish();
    if (values.json) process.stdout.write(JSON.stringify(written, null, 2) + '\n');
    else process.stdout.write(`wrote ${written.path}: ${formatBytes(written.sliceBytes)} (read ${formatBytes(written.readBytes)})\n`);
    return 0;
  },
};
