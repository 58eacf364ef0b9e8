import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { KIND } from './schema.js';
import { validateResource } from './validate.js';

const dir = join(import.meta.dirname, '..', '..', 'examples', 'k8s');
const resources = readdirSync(dir)
  .filter((f) => f.endsWith('.yaml'))
  .flatMap((f) => parseAllDocuments(readFileSync(join(dir, f), 'utf8')).map((d) => [f, d.toJS()] as const))
  .filter(([, o]) => o?.kind === KIND);

describe('examples/k8s resources are valid against the schema', () => {
  it('there are examples', () => expect(resources.length).toBeGreaterThanOrEqual(2));
  it.each(resources.map(([f, o]) => [`${f}: ${o.metadata.name}`, o]))('%s', (_n, o) => {
    expect(validateResource(o)).toEqual([]);
  });
});
