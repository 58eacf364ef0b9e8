import type { Command } from '../main.js';
import { rankCommand } from './rank.js';
import { upCommand } from './up.js';
import { demoCommand } from './demo.js';
import { indexCommand } from './index-cmd.js';
import { exportCommand } from './export.js';
import { inspectCommand } from './inspect.js';
import { layoutCommand } from './layout.js';
import { planCommand } from './plan.js';
import { reshardCommand } from './reshard.js';
import { mergeCommand } from './merge.js';
import { operatorCommand } from './operator.js';

// One line per command; each lives in its own file in this folder.
export const commands: Command[] = [
  upCommand,
  rankCommand,
  demoCommand,
  indexCommand,
  exportCommand,
  inspectCommand,
  layoutCommand,
  planCommand,
  reshardCommand,
  mergeCommand,
  operatorCommand,
];
