import { ShardserveError } from '../core/errors.js';
import { commands } from './commands/index.js';

export interface Command {
  name: string;
  /** One line for `shardserve --help`. */
  summary: string;
  /** Full help text for `shardserve <name> --help`. */
  usage: string;
  /** Returns the process exit code. */
  run(argv: string[]): Promise<number>;
}

function overview(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'shardserve — serve a model straight from the sharded checkpoint distributed training left behind',
    '',
    'Usage: shardserve <command> [options]     (shardserve <command> --help for details)',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(overview());
    return name ? 0 : 2;
  }
  if (name === '--version') {
    process.stdout.write('shardserve 0.1.0\n');
    return 0;
  }
  const command = commands.find((c) => c.name === name);
  if (!command) {
    process.stderr.write(`shardserve: unknown command '${name}' (see shardserve --help)\n`);
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(command.usage.endsWith('\n') ? command.usage : command.usage + '\n');
    return 0;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    return reportError(name, e);
  }
}

/** Where a command takes the key of an encrypted checkpoint, for the error that says one is needed. */
const KEY_HINT: Record<string, string> = {
  default: 'give it with --key-file <file> or --key-env <VAR>, and --dec-mode',
  up: 'give it with --key-file <file>, and --dec-mode',
  rank: "the rank configuration's checkpoint.decryption names the key file (on Kubernetes: spec.checkpoint.decryption, a Secret)",
};

/** One line, no stack trace, unless SHARDSERVE_DEBUG is set. */
export function reportError(command: string, e: unknown): number {
  if (process.env.SHARDSERVE_DEBUG) console.error(e);
  let message = e instanceof Error ? e.message : String(e);
  if (e instanceof ShardserveError && e.code === 'KeyRequired') message += ` (${KEY_HINT[command] ?? KEY_HINT.default})`;
  process.stderr.write(`shardserve ${command}: ${message}\n`);
  return e instanceof ShardserveError && e.code === 'Usage' ? 2 : 1;
}
