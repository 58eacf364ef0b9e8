import { describe, expect, it } from 'vitest';
import { GraphBuilder } from './graph-builder.js';
import { inferTensorTypes } from './shapes.js';

const F = 1, I64 = 7, BOOL = 9;
const i64 = (...v: number[]) => BigInt64Array.from(v.map(BigInt));

function typesOf(build: (g: GraphBuilder) => GraphBuilder) {
  const g = build(new GraphBuilder('t').input('x', 'F32', ['batch', 8, 16]));
  return inferTensorTypes(g.model().graph!);
}

describe('inferTensorTypes', () => {
  it.each([
    ['MatMul broadcasts batch dims', (g: GraphBuilder) => g.initializer('w', 'F32', [16, 4], new Float32Array(64)).node('MatMul', ['x', 'w'], ['y']), { elemType: F, shape: ['batch', 8, 4] }],
    ['Transpose permutes', (g: GraphBuilder) => g.node('Transpose', ['x'], ['y'], { perm: [0, 2, 1] }), { elemType: F, shape: ['batch', 16, 8] }],
    ['Reshape keeps a symbolic batch through -1', (g: GraphBuilder) => g.initializer('s', 'I64', [3], i64(-1, 4, 32)).node('Reshape', ['x', 's'], ['y']), { elemType: F, shape: ['batch', 4, 32] }],
    ['Reshape with 0 copies the dim', (g: GraphBuilder) => g.initializer('s', 'I64', [2], i64(0, 128)).node('Reshape', ['x', 's'], ['y']), { elemType: F, shape: ['batch', 128] }],
    ['Add broadcasts a bias', (g: GraphBuilder) => g.initializer('b', 'F32', [16], new Float32Array(16)).node('Add', ['x', 'b'], ['y']), { elemType: F, shape: ['batch', 8, 16] }],
    ['Less gives BOOL', (g: GraphBuilder) => g.node('Less', ['x', 'x'], ['y']), { elemType: BOOL, shape: ['batch', 8, 16] }],
    ['Cast takes its target type', (g: GraphBuilder) => g.node('Cast', ['x'], ['y'], { to: 10 }), { elemType: 10, shape: ['batch', 8, 16] }],
    ['Shape is a 1-D INT64 of the rank', (g: GraphBuilder) => g.node('Shape', ['x'], ['y']), { elemType: I64, shape: [3] }],
    ['ReduceMean with axes keeps dims', (g: GraphBuilder) => g.node('ReduceMean', ['x'], ['y'], { axes: [-1] }), { elemType: F, shape: ['batch', 8, 1] }],
    ['Concat adds the axis sizes', (g: GraphBuilder) => g.node('Concat', ['x', 'x'], ['y'], { axis: 2 }), { elemType: F, shape: ['batch', 8, 32] }],
    ['Unsqueeze inserts ones', (g: GraphBuilder) => g.initializer('a', 'I64', [1], i64(1)).node('Unsqueeze', ['x', 'a'], ['y']), { elemType: F, shape: ['batch', 1, 8, 16] }],
    ['Gemm with transB', (g: GraphBuilder) => g.node('Flatten', ['x'], ['f']).initializer('w', 'F32', [10, 128], new Float32Array(1280)).node('Gemm', ['f', 'w'], ['y'], { transB: 1 }), { elemType: F, shape: ['batch', 10] }],
    ['Slice keeps the rank, dims unknown', (g: GraphBuilder) => g.node('Slice', ['x', 'x', 'x'], ['y']), { elemType: F, shape: [null, null, null] }],
  ])('%s', (_name, build, want) => {
    expect(typesOf(build).get('y')).toEqual(want);
  });

  it('lets a declared value_info win over inference', () => {
    const types = typesOf((g) => g.node('Relu', ['x'], ['y']).valueInfo('y', 'F32', [2, 8, 16]));
    expect(types.get('y')).toEqual({ elemType: F, shape: [2, 8, 16] });
  });

  it('knows nothing about custom-domain operators', () => {
    const g = new GraphBuilder('t').input('x', 'F32', [2]).node('Mystery', ['x'], ['y']);
    const model = g.model();
    model.graph!.node![0].domain = 'com.example';
    expect(inferTensorTypes(model.graph!).has('y')).toBe(false);
  });
});
