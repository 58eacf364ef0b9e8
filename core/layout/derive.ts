import { ShardserveError } from '../errors.js';
import type { ParamLayout, Strategy, StrategyParam } from '../strategy/types.js';
import { tensorStrategy } from './box.js';

/** The inference world: N ranks = P pipeline stages × T tensor-parallel ranks per stage. */
export interface InferenceTarget {
  world: number;
  stages: number;
  tp: number;
}

/**
 * Completes and checks a target from what the user gave (any two of world/stages/tp, or tp alone):
 * stages defaults to the training stage count; N must equal P × T; P must be 1 or the training
 * stage count (pipeline inference keeps training's stages, reference §2.7).
 */
export function resolveTarget(training: Strategy, given: { world?: number; stages?: number; tp?: number }): InferenceTarget {
  const positive = (v: number | undefined, flag: string) => {
    if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new ShardserveError('Usage', `${flag} must be a positive integer, got ${v}`);
    return v;
  };
  let world = positive(given.world, '--world');
  const stagesGiven = positive(given.stages, '--stages');
  let tp = positive(given.tp, '--tp');
  let stages = stagesGiven ?? (world !== undefined && tp !== undefined ? world / tp : training.stageCount);
  if (!Number.isInteger(stages)) throw new ShardserveError('Usage', `--world ${world} is not a multiple of --tp ${tp}`);
  if (tp === undefined) {
    if (world === undefined) throw new ShardserveError('Usage', 'give the inference world: --tp T (and optionally --stages P), or --world N');
    if (world % stages !== 0) throw new ShardserveError('Usage', `--world ${world} is not a multiple of the ${stages} pipeline stage(s)`);
    tp = world / stages;
  }
  world ??= stages * tp;
  if (world !== stages * tp) throw new ShardserveError('Usage', `--world ${world} must equal --stages ${stages} × --tp ${tp} = ${stages * tp}`);
  if (stages !== 1 && stages !== training.stageCount) {
    const hint = training.stageCount === 1 ? 'use 1' : `use ${training.stageCount}, or 1 to put every stage on each rank`;
    throw new ShardserveError('StageMismatch', `--stages ${stages} does not match the ${training.stageCount} pipeline stage(s) of ${training.uri} (pipeline inference keeps the training stages; ${hint})`);
  }
  return { world, stages, tp };
}

/**
 * The inference layout of one parameter for pure tensor parallelism over T ranks (our stand-in for
 * MindSpore's `infer_predict_layout`):
 *   - keep the dims training split for model parallelism (optimizer sharding is training-only);
 *   - of those, split the one with the most training parts (the first on a tie) into T parts,
 *     provided the full dim divides by T; otherwise try the next; if none fits, replicate.
 * dev_matrix is [T]; the chosen dim maps to axis 0.
 */
export function inferenceLayout(training: ParamLayout, tp: number, fullShape: readonly number[] | undefined, ctx: { param?: string } = {}): ParamLayout {
  const parts = tensorStrategy(training, ctx);
  const candidates = parts
    .map((s, dim) => ({ s, dim }))
    .filter((c) => c.s > 1)
    .sort((a, b) => b.s - a.s || a.dim - b.dim);
  const chosen = tp > 1 ? candidates.find((c) => !fullShape || fullShape[c.dim] % tp === 0) : undefined;
  const layout: ParamLayout = {
    devMatrix: [tp],
    tensorMap: parts.map((_, dim) => (chosen && chosen.dim === dim ? 0 : -1)),
    paramSplitShape: [],
    indicesOffset: [],
    field: 0,
    optShardStep: 0,
    optShardSize: 0,
  };
  if (fullShape) layout.tensorShape = [...fullShape];
  return layout;
}

/**
 * The inference strategy for a target: every training parameter, in its training stage (or all in
 * stage 0 when P = 1), with the layout of `inferenceLayout`. `fullShapes` fills in shapes a protobuf
 * strategy does not carry (from one checkpoint file per stage); without them divisibility is checked
 * later, when the full shape is known.
 */
export function deriveInferenceStrategy(training: Strategy, target: InferenceTarget, fullShapes: Map<string, number[]> = new Map(), uri = 'derived inference strategy'): Strategy {
  const params = new Map<string, StrategyParam>();
  for (const p of training.params.values()) {
    const stages = target.stages === 1 ? [0] : [...p.stages].sort((a, b) => a - b);
    const trainStageFor = (s: number) => (target.stages === 1 ? Math.min(...p.stages) : s);
    const layoutByStage = new Map<number, ParamLayout>();
    for (const s of stages) {
      const trained = p.layoutByStage.get(trainStageFor(s))!;
      layoutByStage.set(s, inferenceLayout(trained, target.tp, trained.tensorShape ?? fullShapes.get(p.name), { param: p.name }));
    }
    params.set(p.name, { name: p.name, stages, layoutByStage });
  }
  return { uri, stageCount: target.stages, stageDevices: target.tp, params };
}
