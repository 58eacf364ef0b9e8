import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { resource } from '../../operator/testing/wrappers.js';
import { checkFile } from './operator-check.js';
import { operatorCommand } from './operator.js';

const dir = mkdtempSync(join(tmpdir(), 'operator-cli-'));
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};

describe('shardserve operator --check', () => {
  it('accepts the shipped examples', () => {
    expect(checkFile(join(import.meta.dirname, '..', '..', 'examples', 'k8s', 'distributedinference.yaml'))).toMatch(/: 1 DistributedInference\(s\) valid$/);
  });

  it('names the file, the resource, the field and the fix', () => {
    const p = file('bad.yaml', stringify(resource('llm').spec({ parallelism: { pipelineStages: 2, tensorParallel: 2, worldSize: 6 } }).build()));
    expect(() => checkFile(p)).toThrow(`${p}: llm: invalid DistributedInference: spec.parallelism: worldSize must equal pipelineStages x tensorParallel; fix one of the three or drop worldSize`);
  });

  it('says when a file holds no DistributedInference', () => {
    const p = file('cm.yaml', 'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n');
    expect(() => checkFile(p)).toThrow(`${p}: no DistributedInference found (expected kind: DistributedInference)`);
  });

  it('rejects a bad flag value with a usage error', async () => {
    await expect(operatorCommand.run(['--workers', '0'])).rejects.toThrow("--workers '0' is not a positive integer");
  });
});
