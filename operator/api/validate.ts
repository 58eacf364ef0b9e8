// Validation of a DistributedInference before it reaches a cluster (CLI, operator), driven by the
// same schema.ts the CRD is generated from: ajv for the structural schema and defaults, then every
// cross-field rule's JS mirror, with the very messages the API server's CEL rules give.
import { Ajv, type ErrorObject } from 'ajv';
import { ShardserveError } from '../../core/errors.js';
import { resourceSchema, type Schema } from './schema.js';
import { toOpenApi } from './generate.js';
import type { DistributedInference } from './types.js';

function stripKubernetesKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(stripKubernetesKeys);
  if (v && typeof v === 'object') {
    return Object.fromEntries(
      Object.entries(v)
        .filter(([k]) => !k.startsWith('x-kubernetes-'))
        .map(([k, x]) => [k, k === 'default' ? x : stripKubernetesKeys(x)]),
    );
  }
  return v;
}

const ajv = new Ajv({ strict: false, allErrors: true, useDefaults: true, validateFormats: false });
// Unknown fields are errors, as under kubectl's strict field validation (the default).
function closeObjects(s: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...s };
  if (out.properties && out.type === 'object') {
    out.additionalProperties = false;
    out.properties = Object.fromEntries(
      Object.entries(out.properties as Record<string, Record<string, unknown>>).map(([k, p]) => [k, k === 'metadata' ? p : closeObjects(p)]),
    );
  }
  if (out.items) out.items = closeObjects(out.items as Record<string, unknown>);
  return out;
}
const validateStructure = ajv.compile(closeObjects(stripKubernetesKeys(toOpenApi(resourceSchema)) as Record<string, unknown>));

function ajvMessage(e: ErrorObject): string {
  const path = e.instancePath.replace(/^\//, '').replace(/\//g, '.');
  switch (e.keyword) {
    case 'required':
      return `${path ? path + '.' : ''}${(e.params as { missingProperty: string }).missingProperty}: Required value`;
    case 'additionalProperties':
      return `${path ? path + '.' : ''}${(e.params as { additionalProperty: string }).additionalProperty}: unknown field`;
    case 'enum':
      return `${path}: Unsupported value: supported values: ${(e.params as { allowedValues: string[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}`;
    default:
      return `${path}: ${e.message}`;
  }
}

function checkRules(s: Schema, value: unknown, old: unknown, path: string, errors: string[]): void {
  if (value === undefined || value === null) return;
  for (const r of s.rules ?? []) {
    if (r.transition && (old === undefined || old === null)) continue;
    let ok: boolean;
    try {
      ok = r.check(value, old);
    } catch {
      ok = false;
    }
    if (!ok) errors.push(`${path || '<root>'}: ${r.message}`);
  }
  if (s.properties && typeof value === 'object') {
    for (const [k, p] of Object.entries(s.properties)) {
      const v = (value as Record<string, unknown>)[k];
      const o = old && typeof old === 'object' ? (old as Record<string, unknown>)[k] : undefined;
      checkRules(p, v, o, path ? `${path}.${k}` : k, errors);
    }
  }
  if (s.items && Array.isArray(value)) value.forEach((v, i) => checkRules(s.items!, v, undefined, `${path}[${i}]`, errors));
}

/**
 * Applies the schema defaults to `resource` (in place, as the API server would) and returns every
 * violation as `<field path>: <what to fix>`; empty when valid. `old` enables the immutability rules.
 */
export function validateResource(resource: unknown, old?: unknown): string[] {
  const errors: string[] = [];
  if (!validateStructure(resource)) {
    for (const e of validateStructure.errors ?? []) errors.push(ajvMessage(e));
    return errors;
  }
  // The stored old object carries its defaults; give a hand-written one the same.
  const oldDefaulted = old === undefined ? undefined : structuredClone(old);
  if (oldDefaulted !== undefined) validateStructure(oldDefaulted);
  checkRules(resourceSchema, resource, oldDefaulted, '', errors);
  return errors;
}

/** validateResource, throwing one ShardserveError listing every problem. */
export function assertValidResource(resource: unknown, source: string, old?: unknown): DistributedInference {
  const errors = validateResource(resource, old);
  if (errors.length) throw new ShardserveError('InvalidResource', `${source}: invalid DistributedInference: ${errors.join('; ')}`, { file: source });
  return resource as DistributedInference;
}
