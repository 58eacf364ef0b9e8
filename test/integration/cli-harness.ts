// Runs the CLI in-process the way a user's shell would see it: exit code, stdout, and stderr without
// Node's own warning lines (e.g. unclosed-handle notices from the runtime, not from shardserve).
import { vi } from 'vitest';
import { main } from '../../cli/main.js';

export async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((c: string | Uint8Array) => ((stdout += String(c)), true));
  vi.spyOn(process.stderr, 'write').mockImplementation((c: string | Uint8Array) => ((stderr += String(c)), true));
  try {
    const code = await main(args);
    return { code, stdout, stderr: stderr.split('\n').filter((l) => !/^\(node:\d+\) |^\(Use `node --trace-warnings/.test(l)).join('\n') };
  } finally {
    vi.restoreAllMocks();
  }
}
