/**
 * One parameter's layout from a MindSpore parallel strategy file (protobuf ParallelLayouts or the
 * JSON form), normalized. See shared reference §2.
 */
export interface ParamLayout {
  /** Devices of one pipeline stage arranged as a matrix; prod(devMatrix) = devices per stage. */
  devMatrix: number[];
  /**
   * One entry per tensor dim. A number: -1 (not split) or an index into devMatrix counted from the
   * right. An array: a nested map (several device axes split that dim, first listed = outermost).
   */
  tensorMap: Array<number | number[]>;
  /** Manual uneven split on dim 0 (empty unless present). */
  paramSplitShape: number[];
  indicesOffset: number[];
  field: number;
  optShardStep: number;
  optShardSize: number;
  /** Full (global) shape when the file says it (JSON `tensor_shape`); protobuf files do not. */
  tensorShape?: number[];
}

export interface StrategyParam {
  name: string;
  /** Pipeline stages this parameter appears in (tied parameters appear in several). */
  stages: number[];
  /** Layout per stage it appears in. */
  layoutByStage: Map<number, ParamLayout>;
}

/** A whole training (or inference) strategy, all stages merged. */
export interface Strategy {
  /** Where it came from (file or directory), for error messages. */
  uri: string;
  /** Number of pipeline stages (stage ids are 0..stageCount-1). */
  stageCount: number;
  /** Devices per stage (prod of any devMatrix; checked equal across params). */
  stageDevices: number;
  params: Map<string, StrategyParam>;
}
