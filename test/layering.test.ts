// The import rules DESIGN.md's layout rests on, read from the sources: core/ knows nothing of
// Kubernetes, servers or the CLI; the CLI's command index loads the rank runtime and the operator
// only when their command runs (so `shardserve plan` or `merge` starts without onnxruntime, gRPC or
// the Kubernetes client, and a rank without the operator).
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function sources(dir: string): string[] {
  return readdirSync(join(root, dir), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') && !e.parentPath.includes('testing'))
    .map((e) => relative(root, join(e.parentPath, e.name)));
}

/** Specifiers of a file's static imports that load code (`import type` loads nothing). */
function staticImports(file: string): string[] {
  const text = readFileSync(join(root, file), 'utf8');
  return [...text.matchAll(/^import\s+(?!type\s)[^;]*?from\s+'([^']+)'/gms), ...text.matchAll(/^export\s+(?!type\s)[^;]*?from\s+'([^']+)'/gms)].map((m) => m[1]);
}

describe('import layering', () => {
  it('reads the import lines it checks (the rules below are not vacuous)', () => {
    expect(staticImports('cli/commands/operator.ts')).toContain('../../core/errors.js');
    expect(staticImports('cli/commands/operator-check.ts')).toContain('yaml');
    expect(staticImports('cli/commands/up.ts')).not.toContain('../../runtime-image/up.js');
    expect(sources('core').length).toBeGreaterThan(40);
  });

  it('core/ imports nothing of the runtime, the operator, the CLI, Kubernetes or gRPC', () => {
    const bad = sources('core').flatMap((f) => staticImports(f).filter((s) => /(^|\/)(runtime-image|operator|cli)\/|^@kubernetes\/|^@grpc\//.test(s)).map((s) => `${f}: ${s}`));
    expect(bad).toEqual([]);
  });

  it('the CLI commands load the runtime, onnxruntime, the operator and its YAML parser only when their command runs', () => {
    const eager = sources('cli').flatMap((f) => staticImports(f)
      .filter((s) => /(^|\/)(runtime-image|operator)\/|^onnxruntime-node$|^@kubernetes\/|^@grpc\/|^yaml$|\/core\/onnx\/export\.js$|operator-check\.js$/.test(s))
      .map((s) => `${f}: ${s}`));
    // operator-check.ts is itself loaded only by `operator --check` (checked by the last pattern).
    expect(eager.filter((e) => !e.startsWith('cli/commands/operator-check.ts: '))).toEqual([]);
  });
});
