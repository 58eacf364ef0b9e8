import { existsSync, writeFileSync } from 'node:fs';

/**
 * Kubernetes shows the contents of /dev/termination-log as the container's termination message
 * (the operator surfaces it in the resource's conditions). Written only when the file exists (or
 * SHARDSERVE_TERMINATION_LOG names another path), never elsewhere: the root FS is read-only.
 */
export function writeTerminationMessage(message: string, env: NodeJS.ProcessEnv = process.env): void {
  const path = env.SHARDSERVE_TERMINATION_LOG ?? '/dev/termination-log';
  if (!env.SHARDSERVE_TERMINATION_LOG && !existsSync(path)) return;
  try {
    // Kubernetes keeps at most 4096 bytes of it.
    writeFileSync(path, message.slice(0, 4000) + '\n');
  } catch {
    /* best effort: the message is on stderr too */
  }
}
