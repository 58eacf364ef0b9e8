import { describe, expect, it } from 'vitest';
import { encodeHeaders, HpackDecoder, HpackError, huffmanCodeOf, huffmanDecode } from './hpack.js';

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

/** Huffman-encodes latin1 text with huffmanCodeOf (padding with ones), to test the decoder on every symbol. */
function huffmanEncode(text: string): Buffer {
  const bits: number[] = [];
  for (const c of Buffer.from(text, 'latin1')) {
    const [code, len] = huffmanCodeOf(c);
    for (let i = len - 1; i >= 0; i--) bits.push(Math.floor(code / 2 ** i) % 2);
  }
  while (bits.length % 8) bits.push(1);
  const out = Buffer.alloc(bits.length / 8);
  bits.forEach((b, i) => (out[i >> 3] |= b << (7 - (i & 7))));
  return out;
}

describe('HPACK Huffman code', () => {
  it('is a complete prefix code over 257 symbols (Kraft sum exactly 1), EOS 30 bits of ones', () => {
    let kraft = 0;
    for (let s = 0; s <= 256; s++) kraft += 2 ** -huffmanCodeOf(s)[1];
    expect(kraft).toBe(1);
    expect(huffmanCodeOf(256)).toEqual([0x3fffffff, 30]);
    // RFC 7541 Appendix B, a few rows: '0' (0x30) = 00000 (5 bits), 'a' = 00011, '/' = 011000 (6), 0 = 1111111111000 (13).
    expect([huffmanCodeOf(0x30), huffmanCodeOf(0x61), huffmanCodeOf(0x2f), huffmanCodeOf(0)]).toEqual([[0, 5], [3, 5], [0x18, 6], [0x1ff8, 13]]);
  });

  it('decodes RFC 7541 C.4 strings and every byte value', () => {
    expect(huffmanDecode(hex('f1e3 c2e5 f23a 6ba0 ab90 f4ff'))).toBe('www.example.com');
    expect(huffmanDecode(hex('a8eb 1064 9cbf'))).toBe('no-cache');
    const all = Buffer.from(Array.from({ length: 256 }, (_, i) => i)).toString('latin1');
    expect(huffmanDecode(huffmanEncode(all))).toBe(all);
    expect(huffmanDecode(Buffer.alloc(0))).toBe('');
  });

  it('refuses padding longer than 7 bits or not all ones, and an encoded EOS', () => {
    expect(() => huffmanDecode(Buffer.from([0xff]))).toThrow(HpackError); // 8 bits of padding
    expect(() => huffmanDecode(Buffer.from([0x00]))).toThrow('invalid Huffman padding'); // '0' then 000 padding
    expect(() => huffmanDecode(Buffer.from([0xff, 0xff, 0xff, 0xfc]))).toThrow('EOS in a Huffman-coded string');
  });
});

describe('HpackDecoder', () => {
  it('decodes the RFC 7541 C.4 request series (Huffman, dynamic table shared across blocks)', () => {
    const d = new HpackDecoder();
    expect(d.decode(hex('8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff'))).toEqual({ ':method': 'GET', ':scheme': 'http', ':path': '/', ':authority': 'www.example.com' });
    expect(d.decode(hex('8286 84be 5886 a8eb 1064 9cbf'))).toEqual({ ':method': 'GET', ':scheme': 'http', ':path': '/', ':authority': 'www.example.com', 'cache-control': 'no-cache' });
    expect(d.decode(hex('8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf'))).toEqual({ ':method': 'GET', ':scheme': 'https', ':path': '/index.html', ':authority': 'www.example.com', 'custom-key': 'custom-value' });
  });

  it('evicts the oldest entries past the table size, and applies size updates at the start of a block', () => {
    // Table of 80 bytes: two entries of 'aaaa: bbbb' (4 + 4 + 32 = 40 bytes each) fit, a third evicts the first.
    const d = new HpackDecoder(80);
    const lit = (n: string, v: string) => Buffer.concat([Buffer.from([0x40, n.length]), Buffer.from(n), Buffer.from([v.length]), Buffer.from(v)]);
    d.decode(Buffer.concat([lit('k1xx', 'v1xx'), lit('k2xx', 'v2xx'), lit('k3xx', 'v3xx')]));
    expect(d.decode(Buffer.from([0x80 | 62, 0x80 | 63]))).toEqual({ k3xx: 'v3xx', k2xx: 'v2xx' });
    expect(() => d.decode(Buffer.from([0x80 | 64]))).toThrow('index 64 is past the tables');
    // A size update to 40 keeps only the newest entry; to 0 empties the table.
    d.decode(Buffer.from([0x20 | 31, 40 - 31]));
    expect(d.decode(Buffer.from([0x80 | 62]))).toEqual({ k3xx: 'v3xx' });
    expect(() => d.decode(Buffer.from([0x80 | 63]))).toThrow(HpackError);
    d.decode(Buffer.from([0x20]));
    expect(() => d.decode(Buffer.from([0x80 | 62]))).toThrow('index 62 is past the tables');
    expect(() => d.decode(Buffer.from([0x3f, 0x32]))).toThrow('table size 81 over the 80 allowed');
    expect(() => d.decode(Buffer.from([0x82, 0x20]))).toThrow('table size update after a field');
  });

  it('decodes a repeated block anew once the table has changed (a block that indexes nothing is reused only while the table stays)', () => {
    const d = new HpackDecoder();
    const lit = (v: string) => Buffer.concat([Buffer.from([0x40, 1]), Buffer.from('k'), Buffer.from([v.length]), Buffer.from(v)]);
    const again = Buffer.from([0x84, 0xbe]); // :path / and dynamic entry 62
    d.decode(lit('v1'));
    expect(d.decode(again)).toEqual({ ':path': '/', k: 'v1' });
    const first = d.decode(again);
    first.k = 'changed by the caller';
    expect(d.decode(again)).toEqual({ ':path': '/', k: 'v1' });
    d.decode(lit('v2'));
    expect(d.decode(again)).toEqual({ ':path': '/', k: 'v2' });
    d.decode(Buffer.from([0x20])); // table emptied
    expect(() => d.decode(again)).toThrow('index 62 is past the tables');
  });

  it('refuses truncated blocks, index 0 and header lists over the limit', () => {
    const d = new HpackDecoder(4096, 100);
    expect(() => d.decode(Buffer.from([0x7f]))).toThrow('truncated integer');
    expect(() => d.decode(Buffer.from([0x00, 0x05, 0x61]))).toThrow('truncated string');
    expect(() => d.decode(Buffer.from([0x80]))).toThrow('index 0');
    expect(() => d.decode(encodeHeaders([['a', 'x'.repeat(70)]]))).toThrow('header list over 100 bytes');
  });

  it('reads back what encodeHeaders writes (static names, new names, long values, :status 200)', () => {
    const fields: [string, string][] = [[':status', '200'], ['content-type', 'application/grpc'], ['grpc-status', '3'], ['grpc-message', 'x'.repeat(300)], [':status', '415']];
    const block = encodeHeaders(fields.slice(0, 4));
    expect(block[0]).toBe(0x88);
    expect(new HpackDecoder().decode(block)).toEqual(Object.fromEntries(fields.slice(0, 4)));
    expect(new HpackDecoder().decode(encodeHeaders([fields[4]]))).toEqual({ ':status': '415' });
  });
});

describe('HpackDecoder under mutated blocks', () => {
  it('survives 10,000 mutated header blocks: only HpackError, each decoded within its deadline', async () => {
    const { MUTATIONS, Rng, mutate } = await import('../../test/fuzz/mutate.js');
    const seeds = [
      hex('8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff'),
      hex('8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf'),
      hex('83049f60d54a5b0b510abe2dbaef64aa52d85a885dc5b3b98856341e42d192a94b67418b089d5c0b8170dc65a1099f865f8b1d75d0620d263d4c4d656440027465864d833505b11f40899acac8b24d494f6a7f03333053'),
      encodeHeaders([[':status', '200'], ['content-type', 'application/grpc'], ['grpc-message', 'x'.repeat(200)]]),
    ];
    const rng = new Rng(7);
    const failures: string[] = [];
    let typed = 0;
    let maxMs = 0;
    for (let i = 0; i < 10_000; i++) {
      let input = mutate(rng, rng.pick(seeds), seeds, MUTATIONS[i % MUTATIONS.length]);
      if (rng.int(4) === 0) input = mutate(rng, input, seeds, rng.pick(MUTATIONS));
      const d = new HpackDecoder(4096, 16 * 1024);
      if (i % 2) d.decode(seeds[0]); // some cases against a table that has entries
      const t0 = performance.now();
      try {
        d.decode(input);
      } catch (e) {
        if (e instanceof HpackError) typed++;
        else if (failures.length < 5) failures.push(`case ${i}: ${(e as Error).stack}`);
      }
      maxMs = Math.max(maxMs, performance.now() - t0);
    }
    console.log(`fuzz hpack: 10000 cases, ${typed} typed errors, max ${maxMs.toFixed(1)} ms/case`);
    expect(failures).toEqual([]);
    expect(typed).toBeGreaterThan(1000);
    expect(maxMs).toBeLessThan(1000);
  });
});
