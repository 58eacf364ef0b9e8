import { parseArgs } from 'node:util';
import { buildManifest, writeManifest } from '../../core/checkpoint/open.js';
import { ShardserveError } from '../../core/errors.js';
import { MANIFEST_NAME } from '../../core/storage/manifest.js';
import { openStorage } from '../../core/storage/storage.js';
import type { Command } from '../main.js';

const usage = `Usage: shardserve index <dir|uri> [--json] [--quiet]

Write ${MANIFEST_NAME} at the root of a checkpoint location (a local directory, file://, or
s3://bucket/prefix): every object's key, size and ETag (size-mtime for local files), and the record
index of every plain .ckpt / .safetensors, so a rank plans with one small GET per location instead of
a round trip per record. Readers use an entry only while its size and ETag still match the object;
re-run this after changing files. http(s):// locations are read-only: index the directory the web
server serves, then serve ${MANIFEST_NAME} with it (it is also what lets http(s) "list").

Options:
  --json    print the manifest summary as JSON
  --quiet   print nothing but errors
`;

export const indexCommand: Command = {
  name: 'index',
  summary: `write ${MANIFEST_NAME} (sizes, ETags, record index) next to a checkpoint`,
  usage,
  async run(argv) {
    let parsed;
    try {
      parsed = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean' }, quiet: { type: 'boolean' } } });
    } catch (e) {
      throw new ShardserveError('Usage', (e as Error).message);
    }
    const { positionals, values } = parsed;
    if (positionals.length !== 1) throw new ShardserveError('Usage', `expected exactly one <dir|uri>, got ${positionals.length}`);
    const storage = await openStorage(positionals[0]);
    if (!storage.write) {
      throw new ShardserveError('ReadOnlyStorage', `${positionals[0]}: cannot write ${MANIFEST_NAME} over http(s); index the served directory (or the s3:// location) instead`, { file: positionals[0] });
    }
    const t0 = Date.now();
    const manifest = await buildManifest(storage, {
      onFile: (f, done, total) => {
        if (!values.quiet && !values.json) {
          const what = f.index ? `${f.index.format}, ${f.index.tensors.length} tensors` : f.encryption ? `encrypted (${f.encryption}), not indexed` : f.skipped ? `listed, not indexed (${f.skipped})` : 'listed';
          process.stderr.write(`[${done}/${total}] ${f.key}: ${what}\n`);
        }
      },
    });
    const where = await writeManifest(storage, manifest);
    const indexed = manifest.files.filter((f) => f.index).length;
    const tensors = manifest.files.reduce((a, f) => a + (f.index?.tensors.length ?? 0), 0);
    if (values.json) {
      process.stdout.write(JSON.stringify({ manifest: where, files: manifest.files.length, indexed, tensors, seconds: (Date.now() - t0) / 1000 }) + '\n');
    } else if (!values.quiet) {
      process.stdout.write(`wrote ${where}: ${manifest.files.length} files, ${indexed} checkpoints indexed (${tensors} tensors)\n`);
    }
    return 0;
  },
};
