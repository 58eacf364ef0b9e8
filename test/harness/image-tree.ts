// What runtime-image/Dockerfile's build stage makes, made here in a directory (no image can be
// built on this machine): the paths it copies, the production packages, and the product compiled
// to JavaScript next to its sources with `tsc -p tsconfig.build.json`. Tests run the image's
// commands from it; bench:rank-load compares a rank's start from it with one through tsx.
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The repository paths the Dockerfile's build stage copies after installing (its COPY lines, in order). */
export const IMAGE_PATHS = ['tsconfig.json', 'tsconfig.build.json', 'bin', 'core', 'cli', 'operator', 'crds', 'runtime-image'];
/** What it copies first, to install every package (`npm ci`). */
export const INSTALL_PATHS = ['package.json', 'package-lock.json', '.npmrc'];

/**
 * Makes the tree in `dir` (which must not exist or be empty) and returns `dir`: compiled with every
 * package linked (the build stage's `npm ci`), then left with the production packages only (the final
 * stage's, `npm ci --omit=dev`), less tsx and the esbuild it runs: the image installs them, but
 * compiled JavaScript must not need them, which their absence proves.
 */
export function buildImageTree(dir: string): string {
  mkdirSync(dir, { recursive: true });
  cpSync(join(ROOT, 'package.json'), join(dir, 'package.json'));
  for (const p of IMAGE_PATHS) {
    // runtime-image/Dockerfile.dockerignore leaves the tests out of the build context.
    cpSync(join(ROOT, p), join(dir, p), { recursive: true, filter: (src) => !src.endsWith('.test.ts') });
  }
  const modules = join(dir, 'node_modules');
  mkdirSync(modules);
  for (const name of readdirSync(join(ROOT, 'node_modules'))) if (name !== '.bin') symlinkSync(join(ROOT, 'node_modules', name), join(modules, name));
  execFileSync(process.execPath, [join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(dir, 'tsconfig.build.json')], { cwd: dir, stdio: 'pipe', timeout: 180_000 });
  // Production's packages: the lockfile marks the others dev (scoped names are one directory of links).
  const lock = JSON.parse(readFileSync(join(ROOT, 'package-lock.json'), 'utf8')).packages as Record<string, { dev?: boolean }>;
  const unwanted = (name: string) => ['tsx', 'esbuild'].includes(name) || name.startsWith('@esbuild/') || lock[`node_modules/${name}`]?.dev === true;
  for (const entry of readdirSync(modules)) {
    const names = entry.startsWith('@') ? readdirSync(join(ROOT, 'node_modules', entry)).map((n) => `${entry}/${n}`) : [entry];
    if (names.every(unwanted)) rmSync(join(modules, entry));
    else if (names.some(unwanted)) {
      // A scope with packages of both kinds: a real directory with links to the wanted ones.
      rmSync(join(modules, entry));
      mkdirSync(join(modules, entry));
      for (const n of names.filter((x) => !unwanted(x))) symlinkSync(join(ROOT, 'node_modules', n), join(modules, n));
    }
  }
  return dir;
}
