/**
 * Deterministic input mutators for parser fuzzing: bit flips, byte overwrites, truncation, splices
 * and length-field inflation. Every choice comes from a seeded PRNG, so a failing case is replayed
 * from its (seed, case number) alone.
 */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9;
  }
  /** xorshift32 */
  next(): number {
    let x = this.s;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.s = x >>> 0;
    return this.s;
  }
  int(n: number): number {
    return n <= 0 ? 0 : this.next() % n;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
}

export type Mutation = 'bitflip' | 'byteset' | 'truncate' | 'splice' | 'delete' | 'duplicate' | 'inflate-varint' | 'inflate-u64' | 'inflate-digits';

const SPECIAL = [0x00, 0xff, 0x7f, 0x80, 0x0a, 0x12, 0x1a, 0x22, 0x08, 0x01];

/** Positions of bytes that follow a protobuf length-delimited key (likely length varints). */
function lengthFieldCandidates(b: Uint8Array): number[] {
  const out: number[] = [];
  for (let i = 0; i + 1 < b.length && out.length < 4096; i++) if ((b[i] & 7) === 2 && b[i] < 0x80) out.push(i + 1);
  return out;
}

export function mutate(rng: Rng, input: Uint8Array, donors: readonly Uint8Array[], kind: Mutation): Uint8Array {
  const b = Uint8Array.from(input);
  const len = b.length;
  switch (kind) {
    case 'bitflip': {
      const flips = 1 + rng.int(8);
      for (let i = 0; i < flips && len; i++) b[rng.int(len)] ^= 1 << rng.int(8);
      return b;
    }
    case 'byteset': {
      const n = 1 + rng.int(4);
      for (let i = 0; i < n && len; i++) b[rng.int(len)] = rng.int(2) ? rng.pick(SPECIAL) : rng.int(256);
      return b;
    }
    case 'truncate':
      return b.subarray(0, rng.int(len + 1));
    case 'delete': {
      const at = rng.int(len + 1);
      const n = 1 + rng.int(Math.max(1, Math.min(64, len - at)));
      return concat(b.subarray(0, at), b.subarray(Math.min(len, at + n)));
    }
    case 'duplicate': {
      const at = rng.int(len + 1);
      const n = 1 + rng.int(64);
      return concat(b.subarray(0, at), b.subarray(at, at + n), b.subarray(at));
    }
    case 'splice': {
      const donor = rng.pick(donors);
      const from = rng.int(donor.length + 1);
      const piece = donor.subarray(from, from + 1 + rng.int(256));
      const at = rng.int(len + 1);
      const cut = rng.int(2) ? at + rng.int(64) : at;
      return concat(b.subarray(0, at), piece, b.subarray(Math.min(len, cut)));
    }
    case 'inflate-varint': {
      // Replace a length varint with a huge one: the parser must not trust it for allocation.
      const c = lengthFieldCandidates(b);
      if (!c.length) return b;
      const at = rng.pick(c);
      const huge = rng.pick([[0xff, 0xff, 0xff, 0xff, 0x0f], [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], [0x80, 0x80, 0x80, 0x80, 0x08], [0xfe, 0xff, 0xff, 0x7f]]);
      return concat(b.subarray(0, at), Uint8Array.from(huge), b.subarray(at + 1));
    }
    case 'inflate-u64': {
      // The safetensors header length (or any 8-byte run) set to a huge or off-by-some value.
      const at = rng.int(3) === 0 ? rng.int(Math.max(1, len - 8)) : 0;
      const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
      if (at + 8 > len) return b;
      const cur = dv.getBigUint64(at, true);
      dv.setBigUint64(at, rng.pick([0xffffffffffffffffn, 100_000_001n, 1n << 40n, cur + 1n, cur > 0n ? cur - 1n : 0n, cur + 4096n]), true);
      return b;
    }
    case 'inflate-digits': {
      // Grow a decimal number in text (JSON offsets, shapes, dev_matrix) to something enormous.
      const digits: number[] = [];
      for (let i = 0; i < len && digits.length < 4096; i++) if (b[i] >= 0x30 && b[i] <= 0x39) digits.push(i);
      if (!digits.length) return b;
      const at = rng.pick(digits);
      const big = new TextEncoder().encode(rng.pick(['99999999999', '18446744073709551615', '1e308', '-1', '4294967296', '9007199254740993']));
      return concat(b.subarray(0, at), big, b.subarray(at + 1));
    }
  }
}

export const MUTATIONS: Mutation[] = ['bitflip', 'byteset', 'truncate', 'splice', 'delete', 'duplicate', 'inflate-varint', 'inflate-u64', 'inflate-digits'];

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
