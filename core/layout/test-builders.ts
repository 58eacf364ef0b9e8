import type { ParamLayout, Strategy, StrategyParam } from '../strategy/types.js';

/** A layout with MindSpore's defaults for everything not given (for tests). */
export function layoutOf(devMatrix: number[], tensorMap: Array<number | number[]>, extra: Partial<ParamLayout> = {}): ParamLayout {
  return { devMatrix, tensorMap, paramSplitShape: [], indicesOffset: [], field: 0, optShardStep: 0, optShardSize: 0, ...extra };
}

/** A strategy from `{name: layout}` per stage (for tests). */
export function strategyOf(stages: Array<Record<string, ParamLayout>>, uri = 'test-strategy.json'): Strategy {
  const params = new Map<string, StrategyParam>();
  let stageDevices = 0;
  stages.forEach((layouts, stage) => {
    for (const [name, layout] of Object.entries(layouts)) {
      stageDevices = layout.devMatrix.reduce((a, b) => a * b, 1);
      const p = params.get(name) ?? { name, stages: [], layoutByStage: new Map() };
      p.stages.push(stage);
      p.layoutByStage.set(stage, layout);
      params.set(name, p);
    }
  });
  return { uri, stageCount: stages.length, stageDevices, params };
}
