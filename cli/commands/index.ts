import type { Command } from '../main.js';
import { indexCommand } from './index-cmd.js';
import { exportCommand } from './export.js';

// One line per command; each lives in its own file in this folder.
export const commands: Command[] = [
  indexCommand,
  exportCommand,
];
