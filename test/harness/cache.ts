import { mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';

/**
 * Where heavy test-bed builds (Go binaries, the Python venv) are cached across runs and clones:
 * $SHARDSERVE_CACHE, else $XDG_CACHE_HOME/shardserve, else ~/.cache/shardserve.
 */
export function cacheDir(...sub: string[]): string {
  const base = process.env.SHARDSERVE_CACHE ?? join(process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'shardserve');
  const dir = join(base, ...sub);
  mkdirSync(dir, { recursive: true });
  return dir;
}
