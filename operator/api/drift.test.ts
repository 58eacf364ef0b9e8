import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { CHART_CRD_PATH, CRD_PATH, TYPES_PATH, chartCrdTemplate, crdYaml, typesSource } from './generate.js';

// One source of truth (operator/api/schema.ts): when this fails, run `npx tsx operator/api/generate.ts`.
describe('generated API files match operator/api/schema.ts', () => {
  it.each([
    ['the CRD in crds/', CRD_PATH, crdYaml],
    ["the chart's copy of the CRD", CHART_CRD_PATH, chartCrdTemplate],
    ['the TypeScript types', TYPES_PATH, typesSource],
  ])('%s', (_what, path, generate) => {
    expect(readFileSync(path, 'utf8')).toBe(generate());
  });
});
