import { describe, expect, it } from 'vitest';
import { InferError } from './errors.js';
import { fromJsonData, fromTypedContents, jsonDataText, type OipDatatype } from './tensor.js';

const le64 = (...xs: bigint[]) => Buffer.from(new BigInt64Array(xs).buffer);

/** `fn` throws an InferError of kind InvalidArgument with exactly `message`. */
function rejects(fn: () => unknown, message: string) {
  expect(fn).toThrow(expect.objectContaining({ kind: 'InvalidArgument', message }));
  expect(fn).toThrow(InferError);
}

describe('OIP tensor data', () => {
  it('keeps every digit of 64-bit integers sent as gRPC typed contents (decimal strings)', () => {
    const big = ['9007199254740993', '-9223372036854775808', '9223372036854775807'];
    expect(Buffer.from(fromTypedContents('ids', 'INT64', [3], { int64_contents: big }))).toEqual(le64(9007199254740993n, -(2n ** 63n), 2n ** 63n - 1n));
    const u = fromTypedContents('ids', 'UINT64', [1], { uint64_contents: ['18446744073709551615'] });
    expect(Buffer.from(u)).toEqual(Buffer.from(new BigUint64Array([2n ** 64n - 1n]).buffer));
  });

  it('writes 64-bit integer outputs as JSON with every digit', () => {
    const data = new Uint8Array(le64(9007199254740993n, -5n, 2n ** 63n - 1n));
    expect(jsonDataText({ name: 'y', datatype: 'INT64', shape: [3], data })).toBe('[9007199254740993,-5,9223372036854775807]');
    expect(jsonDataText({ name: 'b', datatype: 'BOOL', shape: [3], data: new Uint8Array([1, 0, 2]) })).toBe('[true,false,true]');
    expect(jsonDataText({ name: 'f', datatype: 'FP32', shape: [2], data: new Uint8Array(new Float32Array([0.5, -2]).buffer) })).toBe('[0.5,-2]');
    // Floats and narrow integers: exactly JSON.stringify's text, non-finite values included.
    const f = new Float32Array([0.1, -0, NaN, Infinity, -Infinity, 3.4028234663852886e38, 1e-45, -2.5]);
    expect(jsonDataText({ name: 'f', datatype: 'FP32', shape: [8], data: new Uint8Array(f.buffer) })).toBe(JSON.stringify(Array.from(f)));
    const finite = new Float32Array([0.1, -0, 3.4028234663852886e38, 1e-45, -2.5, 16777217, 1e21]);
    expect(jsonDataText({ name: 'f', datatype: 'FP32', shape: [7], data: new Uint8Array(finite.buffer) })).toBe(JSON.stringify(Array.from(finite)));
    const d = new Float64Array([1 / 3, -1e300, NaN]);
    expect(jsonDataText({ name: 'd', datatype: 'FP64', shape: [3], data: new Uint8Array(d.buffer) })).toBe('[0.3333333333333333,-1e+300,null]');
    const i8 = new Int8Array([-128, 0, 127]);
    expect(jsonDataText({ name: 'i', datatype: 'INT8', shape: [3], data: new Uint8Array(i8.buffer) })).toBe('[-128,0,127]');
  });

  it('refuses integers outside the datatype instead of wrapping them', () => {
    const cases: Array<[OipDatatype, unknown, string]> = [
      ['INT8', 128, "input 'x': element 1 of data (128) is outside the INT8 range [-128, 127]"],
      ['UINT8', -1, "input 'x': element 1 of data (-1) is outside the UINT8 range [0, 255]"],
      ['UINT16', 65536, "input 'x': element 1 of data (65536) is outside the UINT16 range [0, 65535]"],
      ['INT32', 2 ** 31, "input 'x': element 1 of data (2147483648) is outside the INT32 range [-2147483648, 2147483647]"],
      ['UINT32', -3, "input 'x': element 1 of data (-3) is outside the UINT32 range [0, 4294967295]"],
      ['UINT64', -1, "input 'x': element 1 of data (-1) is outside the UINT64 range [0, 18446744073709551615]"],
      ['INT32', 1.5, "input 'x': element 1 of data is not an integer"],
      ['INT64', '7', "input 'x': element 1 of data is not an integer"],
    ];
    for (const [datatype, bad, message] of cases) rejects(() => fromJsonData('x', datatype, [2], [0, bad]), message);
    rejects(() => fromTypedContents('x', 'INT64', [1], { int64_contents: ['9223372036854775808'] }),
      "input 'x': element 0 of data (9223372036854775808) is outside the INT64 range [-9223372036854775808, 9223372036854775807]");
  });

  it('refuses a JSON number for a 64-bit integer that JSON parsing has already rounded', () => {
    const parsed = JSON.parse('[1, 9007199254740993]'); // becomes 9007199254740992
    rejects(() => fromJsonData('ids', 'INT64', [2], parsed),
      "input 'ids': element 1 of data (9007199254740992) is beyond 2^53, where a JSON number no longer holds a INT64 exactly; send this input as binary data");
    expect(Buffer.from(fromJsonData('ids', 'INT64', [2], [1, 2 ** 53 - 1]))).toEqual(le64(1n, 2n ** 53n - 1n));
  });

  it('takes the extremes of each narrow integer type exactly', () => {
    expect(Array.from(new Int8Array(fromJsonData('x', 'INT8', [2], [-128, 127]).buffer))).toEqual([-128, 127]);
    expect(Array.from(new Uint32Array(fromJsonData('x', 'UINT32', [2], [0, 4294967295]).buffer))).toEqual([0, 4294967295]);
    expect(Array.from(new Int16Array(fromTypedContents('x', 'INT16', [2], { int_contents: [-32768, 32767] }).buffer))).toEqual([-32768, 32767]);
  });
});
