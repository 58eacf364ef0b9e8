import { stat } from 'node:fs/promises';
import { basename } from 'node:path';
import { discoverCheckpoint } from '../../core/checkpoint/discover.js';
import { openCheckpointObject } from '../../core/checkpoint/open.js';
import type { CheckpointIndex } from '../../core/checkpoint/types.js';
import { isShardserveError, ShardserveError } from '../../core/errors.js';
import { tensorStrategy } from '../../core/layout/box.js';
import { loadStrategy } from '../../core/reshard/session.js';
import { openParent, openStorage, type Storage } from '../../core/storage/storage.js';
import { parseStrategyFiles } from '../../core/strategy/reader.js';
import type { Strategy } from '../../core/strategy/types.js';
import { decryptionFlags, decryptionFrom, formatBytes, parseFlags } from '../args.js';
import type { Command } from '../main.js';

const isUrl = (uri: string) => /^[a-z][a-z0-9+.-]*:\/\//i.test(uri) && !/^file:\/\//i.test(uri);

function describeIndex(index: CheckpointIndex, uri: string) {
  return {
    uri,
    format: index.format,
    crc: index.crc,
    encryption: index.encryption,
    tensors: [...index.tensors.values()].map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: t.byteLength })),
    strings: [...index.strings.values()].map((s) => ({ name: s.name, value: s.value })),
    metadata: index.metadata,
    notes: index.notes,
  };
}

function describeStrategy(strategy: Strategy) {
  return {
    uri: strategy.uri,
    stages: strategy.stageCount,
    devicesPerStage: strategy.stageDevices,
    params: [...strategy.params.values()].map((p) => ({
      name: p.name,
      stages: p.stages,
      layouts: p.stages.map((s) => {
        const l = p.layoutByStage.get(s)!;
        return { stage: s, devMatrix: l.devMatrix, tensorMap: l.tensorMap, parts: tensorStrategy(l, { param: p.name }), fullShape: l.tensorShape, optShardStep: l.optShardStep, optShardSize: l.optShardSize, paramSplitShape: l.paramSplitShape };
      }),
    })),
  };
}

function stageLookup(strategy: Strategy | undefined, name: string): string {
  const p = strategy?.params.get(name);
  if (!strategy) return '';
  if (!p) return '  (not in strategy)';
  return `  stage ${p.stages.join(',')}  parts [${tensorStrategy(p.layoutByStage.get(p.stages[0])!, { param: name }).join(',')}]`;
}

function indexText(d: ReturnType<typeof describeIndex>, strategy?: Strategy): string {
  const lines = [`${d.uri}: ${d.format}, ${d.tensors.length} tensor(s), crc ${d.crc}, encryption ${d.encryption}`];
  const width = Math.max(4, ...d.tensors.map((t) => t.name.length));
  for (const t of d.tensors) lines.push(`  ${t.name.padEnd(width)}  ${t.dtype.padEnd(4)}  [${t.shape.join(',')}]  ${formatBytes(t.bytes)}${stageLookup(strategy, t.name)}`);
  for (const s of d.strings) lines.push(`  ${s.name.padEnd(width)}  str   ${JSON.stringify(s.value)}`);
  for (const [k, v] of Object.entries(d.metadata)) lines.push(`  metadata ${k} = ${v}`);
  for (const n of d.notes) lines.push(`  note: ${n}`);
  return lines.join('\n');
}

async function isDirectory(uri: string): Promise<boolean> {
  if (isUrl(uri)) {
    if (uri.endsWith('/')) return true;
    const { storage, key } = await openParent(uri);
    try {
      await storage.stat(key);
      return false;
    } catch {
      return true;
    }
  }
  const path = uri.startsWith('file://') ? new URL(uri).pathname : uri;
  try {
    return (await stat(path)).isDirectory();
  } catch {
    throw new ShardserveError('NotFound', `${uri}: no such file or directory`, { file: uri });
  }
}

export const inspectCommand: Command = {
  name: 'inspect',
  summary: 'show what a checkpoint file, rank directory tree or strategy file holds',
  usage: `Usage: shardserve inspect <file|dir|uri> [--strategy <file|dir>] [--verify-crc] [--json]

A .ckpt or .safetensors file: its tensors (dtype, slice shape, bytes), str values, CRC and
encryption status. A checkpoint directory (rank_<N>/ dirs): the same per rank. A strategy file
(.json, or a protobuf .ckpt that is not a checkpoint): every parameter's stage(s) and layout.

  --strategy <file|dir>   also show each parameter's pipeline stage and split (parts per dim)
  --verify-crc            verify CRC trailers / crc_num (reads every payload byte)
  --json                  machine-readable output
  --key-file <file> | --key-env <VAR>, --dec-mode <AES-GCM|AES-CBC|SM4-CBC>   for encrypted .ckpt files

Examples:
  shardserve inspect ckpt/rank_0/net-1_1.ckpt
  shardserve inspect ckpt/ --strategy strategy.ckpt --json
`,
  async run(argv) {
    const { values, positionals } = parseFlags(argv, { json: { type: 'boolean' }, strategy: { type: 'string' }, 'verify-crc': { type: 'boolean' }, ...decryptionFlags }, 1);
    const target = positionals[0];
    if (!target) throw new ShardserveError('Usage', 'give a checkpoint file, directory or URI to inspect');
    const decryption = decryptionFrom(values);
    const strategy = values.strategy ? await loadStrategy(values.strategy) : undefined;
    const out = (text: string, json: unknown) => process.stdout.write(values.json ? JSON.stringify(json, null, 2) + '\n' : text + '\n');

    if (await isDirectory(target)) {
      const storage: Storage = await openStorage(target);
      let ranks: Map<number, string>;
      try {
        ranks = await discoverCheckpoint(storage);
      } catch (e) {
        // A directory of checkpoint files without rank_<N>/ (e.g. one rank's directory): show each file.
        if (!isShardserveError(e) || e.code !== 'NoCheckpoint') throw e;
        const keys = (await storage.list()).map((o) => o.key).filter((k) => /\.(ckpt|safetensors)$/i.test(k) && !k.includes('/'));
        if (keys.length === 0) throw e;
        // A directory of per-stage/per-rank strategy files (protobuf ones end in .ckpt too).
        const asStrategy = await loadStrategy(target).catch(() => undefined);
        if (asStrategy) {
          out(strategyText(asStrategy), { kind: 'strategy', ...describeStrategy(asStrategy) });
          return 0;
        }
        const shown = [];
        for (const key of keys) {
          const index = await openCheckpointObject(storage, key, { decryption, verifyCrc: values['verify-crc'] });
          try {
            shown.push(describeIndex(index, storage.uriOf(key)));
          } finally {
            await index.source.close();
          }
        }
        out(shown.map((d) => indexText(d, strategy)).join('\n'), { kind: 'checkpoint-files', uri: target, files: shown });
        return 0;
      }
      const described = [];
      for (const [rank, key] of ranks) {
        const index = await openCheckpointObject(storage, key, { decryption, verifyCrc: values['verify-crc'] });
        try {
          described.push({ rank, ...describeIndex(index, storage.uriOf(key)) });
        } finally {
          await index.source.close();
        }
      }
      const missing = strategy ? Array.from({ length: strategy.stageCount * strategy.stageDevices }, (_, r) => r).filter((r) => !ranks.has(r)) : [];
      const text = [
        `${target}: ${ranks.size} rank file(s)${strategy ? `; strategy ${strategy.uri}: ${strategy.stageCount} stage(s) × ${strategy.stageDevices} devices${missing.length ? `; MISSING rank(s) ${missing.join(', ')}` : ''}` : ''}`,
        ...described.map((d) => `rank ${d.rank}${strategy ? `  (stage ${Math.floor(d.rank / strategy.stageDevices)})` : ''}\n${indexText(d, strategy)}`),
      ].join('\n');
      out(text, { kind: 'checkpoint-directory', uri: target, ranks: described, missingRanks: missing, strategy: strategy ? describeStrategy(strategy) : undefined });
      return 0;
    }

    const { storage, key } = await openParent(target);
    if (key.toLowerCase().endsWith('.json')) {
      const s = parseStrategyFiles([{ name: basename(key), bytes: await storage.readAll(key) }], target);
      out(strategyText(s), { kind: 'strategy', ...describeStrategy(s) });
      return 0;
    }
    let index: CheckpointIndex;
    try {
      index = await openCheckpointObject(storage, key, { decryption, verifyCrc: values['verify-crc'] });
    } catch (e) {
      // A protobuf strategy file also ends in .ckpt: show it as one when it parses as one.
      if (!isShardserveError(e) || !key.toLowerCase().endsWith('.ckpt')) throw e;
      let s: Strategy;
      try {
        s = parseStrategyFiles([{ name: basename(key), bytes: await storage.readAll(key) }], target);
      } catch {
        throw e;
      }
      out(strategyText(s), { kind: 'strategy', ...describeStrategy(s) });
      return 0;
    }
    try {
      const d = describeIndex(index, target);
      out(indexText(d, strategy), { kind: 'checkpoint', ...d });
    } finally {
      await index.source.close();
    }
    return 0;
  },
};

function strategyText(s: Strategy): string {
  const d = describeStrategy(s);
  const lines = [`${d.uri}: strategy, ${d.stages} stage(s) × ${d.devicesPerStage} devices, ${d.params.length} parameter(s)`];
  for (const p of d.params) {
    for (const l of p.layouts) {
      const opt = l.optShardSize ? `  opt ${l.optShardSize}/${l.optShardStep}` : '';
      const full = l.fullShape ? `  full [${l.fullShape.join(',')}]` : '';
      lines.push(`  ${p.name}  stage ${l.stage}  dev_matrix [${l.devMatrix.join(',')}]  tensor_map ${JSON.stringify(l.tensorMap)}  parts [${l.parts.join(',')}]${full}${opt}`);
    }
  }
  return lines.join('\n');
}
