import { ShardserveError } from '../../core/errors.js';
import { decryptionFlags, decryptionFrom, formatBytes, intFlag, parameterNamesFrom, parseFlags, required } from '../args.js';
import type { Command } from '../main.js';

export const exportCommand: Command = {
  name: 'export',
  summary: 'write one self-contained ONNX per rank (its stage, its weights), or one merged ONNX',
  usage: `Usage: shardserve export --model <net.onnx> --checkpoint <dir|uri> --strategy <file|dir> --out <dir>
                         [--world N] [--stages P] [--tp T] [--cut-tensors a,b,...] [--parameter-names map.json]
                         [--external-data-threshold BYTES] [--json]

Cuts the single-device ONNX graph into pipeline stages (by the stage of each parameter in the training
strategy, or at --cut-tensors) and binds each rank's own weight slice, read from the sharded checkpoint,
into its stage: <out>/rank_<r>/model.onnx for every rank. With --world 1: one merged single-device
<out>/model.onnx. Each file is checked to load in onnxruntime. <out>/export.json lists every stage's
inputs and outputs (tensors that cross a stage boundary, skip connections included).

  --model <file|uri>       ONNX graph of the single-device network (initializers named like the checkpoint)
  --checkpoint <dir|uri>   rank_<N>/ directories of the training checkpoint
  --strategy <file|dir>    training strategy (.ckpt protobuf or .json; per-stage, per-rank or merged)
  --out <dir>              output directory
  --world N --stages P --tp T   inference layout (default: the training stage count, --tp 1);
                           --stages must equal the training stage count unless --world 1.
                           Only --tp 1 is supported for now.
  --cut-tensors a,b        cut after these tensors instead (one per stage boundary)
  --parameter-names <file> JSON {"checkpoint name": "initializer name"} for names that differ
  --external-data-threshold BYTES   weights above this go to <model>.onnx.data (default 1.8 GiB)
  --key-file <file> | --key-env <VAR>, --dec-mode <AES-GCM|AES-CBC|SM4-CBC>   for encrypted .ckpt files
  --json                   print the result as JSON

Example:
  shardserve export --model examples/model/net.onnx --checkpoint examples/checkpoint \\
    --strategy examples/strategy --stages 2 --out exported/
`,
  async run(argv) {
    const { values } = parseFlags(argv, {
      model: { type: 'string' }, checkpoint: { type: 'string' }, strategy: { type: 'string' }, out: { type: 'string' },
      world: { type: 'string' }, stages: { type: 'string' }, tp: { type: 'string' },
      'cut-tensors': { type: 'string' }, 'parameter-names': { type: 'string' }, 'external-data-threshold': { type: 'string' },
      json: { type: 'boolean' }, ...decryptionFlags,
    });
    const cutTensors = values['cut-tensors']?.split(',').map((t) => t.trim()).filter((t) => t);
    const { exportRankModels } = await import('../../core/onnx/export.js');
    const result = await exportRankModels({
      model: required(values.model, '--model'),
      checkpoint: required(values.checkpoint, '--checkpoint'),
      strategy: required(values.strategy, '--strategy'),
      out: required(values.out, '--out'),
      world: intFlag(values.world, '--world', 1),
      stages: intFlag(values.stages, '--stages', 1),
      tp: intFlag(values.tp, '--tp', 1),
      cutTensors,
      parameterNames: parameterNamesFrom(values['parameter-names']),
      externalDataThreshold: intFlag(values['external-data-threshold'], '--external-data-threshold', 0),
      decryption: decryptionFrom(values),
    });
    if (values.json) {
      process.stdout.write(JSON.stringify({ world: result.world, stages: result.stages, tp: result.tp, files: result.files }, null, 2) + '\n');
      return 0;
    }
    for (const f of result.files) {
      process.stdout.write(`rank ${f.rank} (stage ${f.stage}): ${f.file} ${formatBytes(f.bytes)}${f.externalData ? ` + ${f.externalData}` : ''} (read ${formatBytes(f.readBytes)} of checkpoint)\n`);
    }
    const what = result.world === 1 ? 'one merged single-device model' : `${result.world} rank model(s), ${result.stages} pipeline stage(s)`;
    process.stdout.write(`exported ${what} to ${values.out}\n`);
    return 0;
  },
};
