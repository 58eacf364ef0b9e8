import { describe, expect, it } from 'vitest';
import { invalidCases } from '../testing/invalid-cases.js';
import { resource } from '../testing/wrappers.js';
import { assertValidResource, validateResource } from './validate.js';

describe('validateResource (the CLI/operator mirror of the CRD schema)', () => {
  it('accepts a minimal resource and fills in the schema defaults', () => {
    const r = resource().build();
    expect(validateResource(r)).toEqual([]);
    expect(r).toEqual(resource().defaulted().build());
  });

  it.each(invalidCases.map((c) => [c.name, c] as const))('rejects: %s', (_name, c) => {
    const errors = validateResource(structuredClone(c.resource));
    expect(errors.length).toBeGreaterThan(0);
    const hit = errors.find((e) => e.includes(c.localMessage ?? c.message));
    expect(hit, errors.join('\n')).toBeDefined();
    if (c.field) expect(hit!.startsWith(c.field)).toBe(true);
  });

  it('rejects renaming the model (immutable) but allows keeping it', () => {
    const old = resource().spec({ modelName: 'llama' }).build();
    expect(validateResource(resource().spec({ modelName: 'other' }).build(), old)).toEqual([
      'spec.modelName: is immutable: clients address the model by this name; create a new DistributedInference to rename it',
    ]);
    expect(validateResource(resource().spec({ modelName: 'llama' }).build(), old)).toEqual([]);
  });

  it('rejects changing the format of files at an unchanged location', () => {
    const old = resource().spec({ checkpoint: { format: 'safetensors' } }).build();
    expect(validateResource(resource().spec({ checkpoint: { format: 'mindspore-ckpt' } }).build(), old)).toEqual([
      'spec.checkpoint: format can only change together with uri: the files at an unchanged location keep their format',
    ]);
  });

  it('throws one ShardserveError naming the source and every problem', () => {
    expect(() => assertValidResource(resource().layout(0, 0).build(), 'di.yaml')).toThrow(
      'di.yaml: invalid DistributedInference: spec.parallelism.pipelineStages: must be between 1 and 128 (1 = no pipeline); spec.parallelism.tensorParallel: must be between 1 and 64 (1 = no tensor parallelism)',
    );
  });
});
