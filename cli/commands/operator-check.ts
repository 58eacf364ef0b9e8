// `shardserve operator --check <file>`: validates the DistributedInference resources of a YAML file
// as the API server's schema and the operator's admission rules would. Its own module, loaded only
// by --check (the YAML parser and the schema are not needed by any other command).
import { readFileSync } from 'node:fs';
import { parseAllDocuments } from 'yaml';
import { ShardserveError } from '../../core/errors.js';
import { KIND } from '../../operator/api/schema.js';
import { assertValidResource } from '../../operator/api/validate.js';

/** Validates every DistributedInference in a YAML file; returns a one-line summary or throws. */
export function checkFile(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ShardserveError('NotFound', `${file}: cannot read (${(e as Error).message})`, { file, cause: e });
  }
  const docs = parseAllDocuments(text);
  let n = 0;
  for (const [i, doc] of docs.entries()) {
    if (doc.errors.length) throw new ShardserveError('BadConfig', `${file}: document ${i + 1} is not valid YAML (${doc.errors[0].message})`, { file });
    const obj = doc.toJS();
    if (obj?.kind !== KIND) continue;
    assertValidResource(obj, `${file}: ${obj.metadata?.name ?? `document ${i + 1}`}`);
    n++;
  }
  if (n === 0) throw new ShardserveError('BadConfig', `${file}: no ${KIND} found (expected kind: ${KIND})`, { file });
  return `${file}: ${n} ${KIND}(s) valid`;
}
