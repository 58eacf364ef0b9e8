// What runtime-image/Dockerfile's build stage makes, made here in a directory (no image can be
// built on this machine): the paths it copies, the production packages, and the product compiled
// to JavaScript next to its sources with `tsc -p tsconfig.build.json`. Tests run the image's
// commands from it; bench:rank-load compares a rank's start from it with one through tsx.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The repository paths the Dockerfile's build stage copies (its COPY lines, in order). */
export const IMAGE_PATHS = ['tsconfig.json', 'tsconfig.build.json', 'bin', 'core', 'cli', 'operator', 'crds', 'runtime-image'];

/**
 * Packages of node_modules the tree goes without: the development tools, and tsx with the esbuild
 * it runs, which the image installs but compiled JavaScript must not need (a test proves it by
 * their absence).
 */
const LEFT_OUT = new Set(['.bin', 'tsx', 'esbuild', '@esbuild', 'vitest', '@vitest']);

/** Makes the tree in `dir` (which must not exist or be empty) and returns `dir`. */
export function buildImageTree(dir: string): string {
  mkdirSync(dir, { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
  for (const p of IMAGE_PATHS) {
    // runtime-image/Dockerfile.dockerignore leaves the tests out of the build context.
    cpSync(join(ROOT, p), join(dir, p), { recursive: true, filter: (src) => !src.endsWith('.test.ts') });
  }
  mkdirSync(join(dir, 'node_modules'));
  for (const name of readdirSync(join(ROOT, 'node_modules'))) {
    if (!LEFT_OUT.has(name)) symlinkSync(join(ROOT, 'node_modules', name), join(dir, 'node_modules', name));
  }
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(dir, 'tsconfig.build.json')], { cwd: dir, stdio: 'pipe', timeout: 180_000 });
  return dir;
}
