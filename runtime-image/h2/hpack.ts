// HPACK (RFC 7541), as much as an HTTP/2 server needs: a full decoder (static and dynamic tables,
// Huffman-coded strings, table size updates) and an encoder that writes literals without indexing
// (so the peer's table size never matters to us).

/** RFC 7541 Appendix A: the static table, index 1 first. */
const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [':authority', ''], [':method', 'GET'], [':method', 'POST'], [':path', '/'], [':path', '/index.html'],
  [':scheme', 'http'], [':scheme', 'https'], [':status', '200'], [':status', '204'], [':status', '206'],
  [':status', '304'], [':status', '400'], [':status', '404'], [':status', '500'], ['accept-charset', ''],
  ['accept-encoding', 'gzip, deflate'], ['accept-language', ''], ['accept-ranges', ''], ['accept', ''],
  ['access-control-allow-origin', ''], ['age', ''], ['allow', ''], ['authorization', ''], ['cache-control', ''],
  ['content-disposition', ''], ['content-encoding', ''], ['content-language', ''], ['content-length', ''],
  ['content-location', ''], ['content-range', ''], ['content-type', ''], ['cookie', ''], ['date', ''],
  ['etag', ''], ['expect', ''], ['expires', ''], ['from', ''], ['host', ''], ['if-match', ''],
  ['if-modified-since', ''], ['if-none-match', ''], ['if-range', ''], ['if-unmodified-since', ''],
  ['last-modified', ''], ['link', ''], ['location', ''], ['max-forwards', ''], ['proxy-authenticate', ''],
  ['proxy-authorization', ''], ['range', ''], ['referer', ''], ['refresh', ''], ['retry-after', ''],
  ['server', ''], ['set-cookie', ''], ['strict-transport-security', ''], ['transfer-encoding', ''],
  ['user-agent', ''], ['vary', ''], ['via', ''], ['www-authenticate', ''],
];

/**
 * RFC 7541 Appendix B: the Huffman code length of each symbol 0..256 (256 = EOS), as a character
 * 'A' + length - 5. The code is canonical (codes of one length are consecutive, in symbol order,
 * shorter lengths first), so the lengths determine it; the test checks the code is complete.
 */
const HUFFMAN_LENGTHS =
  'ISXXXXXXXTZXXZXXXXXXXXZXXXXXXXXXBFFHIBDGFFDGDBBBAAABBBBBBBCDKBHFIBCCCCCCCCCCCCCCCCCCCCCCDCDIOIJBKABABABBBACCBBBABCBAABCCCCCKGJIXPRPPRRRSRSSSSSTSTTRSTSSSSQRSRSSTRQPRRSSQSRRTQRSSQQRQSRSSPRRRSRRSVVPORSRUVVVWWVTUOQVWWVWTQQVVXWWWPTPQRQQSRRUUTTVSVWVVWWWWWXWWWWWVZ';
const EOS = 256;
const EMPTY = new Uint8Array(0);

/** The canonical decoding tables: per length, the first code, how many codes, and where they start in `symbols`. */
const huffman = (() => {
  const lengths = Array.from(HUFFMAN_LENGTHS, (c) => c.charCodeAt(0) - 65 + 5);
  const symbols = Array.from(lengths.keys()).sort((a, b) => lengths[a] - lengths[b] || a - b);
  const first = new Int32Array(31).fill(-1);
  const count = new Int32Array(31);
  const start = new Int32Array(31);
  let code = 0;
  let len = lengths[symbols[0]];
  symbols.forEach((s, i) => {
    if (i > 0) code = (code + 1) * 2 ** (lengths[s] - len);
    len = lengths[s];
    if (count[len] === 0) {
      first[len] = code;
      start[len] = i;
    }
    count[len]++;
  });
  return { lengths, symbols: Int16Array.from(symbols), first, count, start };
})();

/** An HPACK decoding error: the connection must end with COMPRESSION_ERROR. */
export class HpackError extends Error {}

/** Decodes a Huffman-coded string (RFC 7541 5.2). */
export function huffmanDecode(bytes: Uint8Array): string {
  const out: number[] = [];
  let code = 0;
  let len = 0;
  for (let i = 0; i < bytes.length; i++) {
    const b = bytes[i];
    for (let bit = 7; bit >= 0; bit--) {
      code = code * 2 + ((b >> bit) & 1);
      len++;
      if (len > 30) throw new HpackError('invalid Huffman code');
      const first = huffman.first[len];
      if (first >= 0 && code - first < huffman.count[len]) {
        const s = huffman.symbols[huffman.start[len] + code - first];
        if (s === EOS) throw new HpackError('EOS in a Huffman-coded string');
        out.push(s);
        code = 0;
        len = 0;
      }
    }
  }
  // Padding: fewer than 8 bits, all ones (the most significant bits of EOS).
  if (len > 7 || code !== 2 ** len - 1) throw new HpackError('invalid Huffman padding');
  return Buffer.from(out).toString('latin1');
}

/** The Huffman code of symbol `s` (for tests): [code, length]. */
export function huffmanCodeOf(s: number): [number, number] {
  const len = huffman.lengths[s];
  const i = huffman.symbols.indexOf(s);
  return [huffman.first[len] + (i - huffman.start[len]), len];
}

/** Decoded header fields: names as sent (lower case in HTTP/2), values as latin1 strings; repeats joined with ', '. */
export type HeaderFields = Record<string, string>;

/**
 * One connection's HPACK decoder. `maxTableSize` is the SETTINGS_HEADER_TABLE_SIZE we advertised
 * (the peer may lower the table with size updates, never raise it above that); `maxListSize` bounds
 * a decoded header list (names + values + 32 per field, as RFC 7540 counts it).
 */
export class HpackDecoder {
  private table: [string, string][] = [];
  private tableSize = 0;
  private limit: number;

  constructor(private readonly maxTableSize = 4096, private readonly maxListSize = 64 * 1024) {
    this.limit = maxTableSize;
  }

  /** Decodes one header block (the whole of a HEADERS frame and its CONTINUATIONs). */
  decode(block: Uint8Array): HeaderFields {
    // A client sends the same block for every call of a method once its headers are in the table
    // (nghttp2 re-sends :path as a literal each time): a block that changed no table decodes the same
    // while the table stays as it is.
    const last = this.last;
    if (last && last.version === this.version && Buffer.from(block.buffer, block.byteOffset, block.byteLength).equals(last.block)) return { ...last.fields };
    const version = this.version;
    this.block = block;
    this.p = 0;
    this.fields = {};
    this.listSize = 0;
    let fieldSeen = false;
    while (this.p < block.length) {
      const b = block[this.p];
      if (b & 0x80) {
        // Indexed field.
        const e = this.entry(this.integer(7));
        this.add(e[0], e[1]);
      } else if (b & 0x40) {
        // Literal with incremental indexing.
        const index = this.integer(6);
        const name = index === 0 ? this.string() : this.entry(index)[0];
        const value = this.string();
        this.insert(name, value);
        this.add(name, value);
      } else if (b & 0x20) {
        // Dynamic table size update: only at the start of a block, at most what we allowed.
        if (fieldSeen) throw new HpackError('table size update after a field');
        const size = this.integer(5);
        if (size > this.maxTableSize) throw new HpackError(`table size ${size} over the ${this.maxTableSize} allowed`);
        this.limit = size;
        this.evict(0);
        continue;
      } else {
        // Literal without indexing (0000) or never indexed (0001).
        const index = this.integer(4);
        const name = index === 0 ? this.string() : this.entry(index)[0];
        this.add(name, this.string());
      }
      fieldSeen = true;
    }
    const fields = this.fields;
    this.fields = {};
    this.block = EMPTY;
    this.last = this.version === version && block.length <= 1024 ? { block: Buffer.from(block), fields: { ...fields }, version } : undefined;
    return fields;
  }

  /** Bumped whenever the dynamic table changes. */
  private version = 0;
  private last: { block: Buffer; fields: HeaderFields; version: number } | undefined;

  // The block being decoded, the read position in it, and what it has given so far.
  private block: Uint8Array = EMPTY;
  private p = 0;
  private fields: HeaderFields = {};
  private listSize = 0;
  /** Huffman-coded strings seen lately (peers re-send the ones they do not index, e.g. grpc-timeout). */
  private readonly huffmanSeen = new Map<string, string>();

  private add(name: string, value: string): void {
    this.listSize += name.length + value.length + 32;
    if (this.listSize > this.maxListSize) throw new HpackError(`header list over ${this.maxListSize} bytes`);
    const prev = this.fields[name];
    this.fields[name] = prev === undefined ? value : `${prev}, ${value}`;
  }

  private integer(prefixBits: number): number {
    const block = this.block;
    if (this.p >= block.length) throw new HpackError('truncated integer');
    const mask = (1 << prefixBits) - 1;
    let v = block[this.p++] & mask;
    if (v < mask) return v;
    let shift = 0;
    for (;;) {
      if (this.p >= block.length) throw new HpackError('truncated integer');
      const b = block[this.p++];
      v += (b & 0x7f) * 2 ** shift;
      shift += 7;
      if (v > 0x7fffffff) throw new HpackError('integer too large');
      if ((b & 0x80) === 0) return v;
    }
  }

  private string(): string {
    const block = this.block;
    if (this.p >= block.length) throw new HpackError('truncated string');
    const huff = (block[this.p] & 0x80) !== 0;
    const len = this.integer(7);
    if (this.p + len > block.length) throw new HpackError('truncated string');
    const raw = Buffer.from(block.buffer, block.byteOffset + this.p, len).toString('latin1');
    this.p += len;
    if (!huff) return raw;
    let s = this.huffmanSeen.get(raw);
    if (s === undefined) {
      s = huffmanDecode(Buffer.from(raw, 'latin1'));
      if (this.huffmanSeen.size >= 64) this.huffmanSeen.clear();
      this.huffmanSeen.set(raw, s);
    }
    return s;
  }

  private entry(index: number): readonly [string, string] {
    if (index === 0) throw new HpackError('index 0');
    if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1];
    const e = this.table[index - STATIC_TABLE.length - 1];
    if (!e) throw new HpackError(`index ${index} is past the tables`);
    return e;
  }

  private insert(name: string, value: string): void {
    this.version++;
    const size = name.length + value.length + 32;
    this.evict(size);
    if (size <= this.limit) {
      this.table.unshift([name, value]);
      this.tableSize += size;
    }
  }

  /** Drops the oldest entries until `room` more bytes fit (all of them when it cannot). */
  private evict(room: number): void {
    this.version++;
    while (this.table.length > 0 && this.tableSize + room > this.limit) {
      const [n, v] = this.table.pop()!;
      this.tableSize -= n.length + v.length + 32;
    }
  }
}

function encodeInteger(out: number[], value: number, prefixBits: number, high: number): void {
  const mask = (1 << prefixBits) - 1;
  if (value < mask) {
    out.push(high | value);
    return;
  }
  out.push(high | mask);
  value -= mask;
  while (value >= 0x80) {
    out.push((value % 0x80) | 0x80);
    value = Math.floor(value / 0x80);
  }
  out.push(value);
}

const staticNameIndex = new Map<string, number>();
STATIC_TABLE.forEach(([n], i) => {
  if (!staticNameIndex.has(n)) staticNameIndex.set(n, i + 1);
});

/**
 * Encodes header fields as literals without indexing (a static-table name where there is one,
 * raw strings); `:status 200` as its static entry. Names must be lower case; values latin1.
 */
export function encodeHeaders(fields: readonly (readonly [string, string])[]): Buffer {
  let key = '';
  for (const [n, v] of fields) key += `${n}\0${v}\0`;
  const known = encoded.get(key);
  if (known) return known;
  const block = encodeFields(fields);
  // The same few header sets (a reply's headers, its trailers) come back on every call.
  if (encoded.size >= 256) encoded.clear();
  encoded.set(key, block);
  return block;
}

const encoded = new Map<string, Buffer>();

function encodeFields(fields: readonly (readonly [string, string])[]): Buffer {
  const out: number[] = [];
  for (const [name, value] of fields) {
    if (name === ':status' && value === '200') {
      out.push(0x88);
      continue;
    }
    const index = staticNameIndex.get(name);
    if (index !== undefined) encodeInteger(out, index, 4, 0x00);
    else {
      out.push(0x00);
      encodeInteger(out, name.length, 7, 0x00);
      for (let i = 0; i < name.length; i++) out.push(name.charCodeAt(i));
    }
    const v = Buffer.from(value, 'latin1');
    encodeInteger(out, v.length, 7, 0x00);
    for (const c of v) out.push(c);
  }
  return Buffer.from(out);
}
