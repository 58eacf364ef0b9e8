"""Make the shardserve example with real MindSpore: a small network, its ONNX graph, a sharded
checkpoint and parallel strategy as pipeline training on 4 devices (2 stages x 2-way tensor
parallel) leaves them, and a sample request with the expected answer.

Run it with the test-bed venv (see test/harness/python.ts):  python examples/make_example.py [out_dir] [--keep-full]
(--keep-full also writes net_full.onnx, MindSpore's export with its weights, for tests; it is not committed.)
Everything it writes is deterministic (fixed seeds), small, and committed, so the demo needs no Python.

What MindSpore makes here:
  * model/net.onnx      mindspore.export(..., file_format='ONNX') of the single-device network
                        (MindSpore's ONNX export needs static shapes, so the batch is fixed at 1);
                        its parameter initializers are then zeroed: the weights come from the checkpoint.
  * checkpoint/rank_<r>/net.ckpt   mindspore.save_checkpoint of rank r's slice of its stage's parameters.
  * strategy/strategy_rank<r>.ckpt  MindSpore's own ParallelStrategyMap protobuf class, one per rank
                        as pipeline training writes them; strategy_merged.ckpt by mindspore.merge_pipeline_strategys.
  * the check that MindSpore's transform_checkpoints merges the slices back into the original weights.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

D_IN, D_MODEL, D_HIDDEN, CLASSES = 32, 64, 256, 10
STAGES, STAGE_DEVICES = 2, 2
WORLD = STAGES * STAGE_DEVICES


class Block(nn.Cell):
    """Pre-norm residual MLP block."""

    def __init__(self, d, hidden):
        super().__init__()
        self.norm = nn.LayerNorm((d,))
        self.fc1 = nn.Dense(d, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Dense(hidden, d)

    def construct(self, x):
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


class Net(nn.Cell):
    """embed -> 2 blocks -> head, with a skip from the embedding to the head (it crosses the stage boundary)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Dense(D_IN, D_MODEL)
        self.blocks = nn.CellList([Block(D_MODEL, D_HIDDEN), Block(D_MODEL, D_HIDDEN)])
        self.head = nn.Dense(D_MODEL, CLASSES)

    def construct(self, x):
        e = self.embed(x)
        h = e
        for block in self.blocks:
            h = block(h)
        return self.head(h + e)


def stage_of(name):
    """Pipeline stage of each parameter, as `cell.pipeline_stage` would set it in training."""
    return 0 if name.startswith(("embed.", "blocks.0.")) else 1


# Tensor-parallel layouts within a stage (dev_matrix, tensor_map), as MindSpore derives them for
# Megatron-style sharding: Dense layers that widen are split on their output rows (column parallel),
# the ones that narrow on their input columns (row parallel); norms and row-parallel biases are replicated.
def layout_of(name):
    if name.endswith(("embed.weight", "fc1.weight")):
        return [1, 2, 1], [1, 0]       # MatMul ((1,1),(2,1)), transpose_b: weight rows split in 2
    if name.endswith(("embed.bias", "fc1.bias")):
        return [1, 2], [0]             # BiasAdd ((1,2),(2,))
    if name.endswith(("fc2.weight", "head.weight")):
        return [1, 1, 2], [1, 0]       # MatMul ((1,2),(1,2)), transpose_b: weight columns split in 2
    return [2, 1], [0]                 # replicated (norm gamma/beta, row-parallel biases)


def slice_for(full, dev_matrix, tensor_map, local_rank):
    """The slice of `full` local rank r holds (MindSpore's rule: coordinates row-major, map indexes D from the right)."""
    coord, r = [0] * len(dev_matrix), local_rank
    for i in range(len(dev_matrix) - 1, -1, -1):
        coord[i] = r % dev_matrix[i]
        r //= dev_matrix[i]
    index = []
    for dim, m in enumerate(tensor_map):
        if m == -1:
            index.append(slice(None))
            continue
        parts = dev_matrix[len(dev_matrix) - 1 - m]
        part = coord[len(dev_matrix) - 1 - m]
        step = full.shape[dim] // parts
        index.append(slice(part * step, (part + 1) * step))
    return np.ascontiguousarray(full[tuple(index)])


def strategy_file(stage, param_names):
    from mindspore.train.node_strategy_pb2 import ParallelStrategyMap

    sm = ParallelStrategyMap()
    sm.current_stage = 1  # MindSpore writes ++current_stage_ (1 for the first save); the pipeline stage is below
    for name in param_names:
        item = sm.parallel_strategy_item.add()
        cell = name.rsplit(".", 1)[0].replace(".", "-")
        item.node_name = f"Default/{cell}/{'MatMul' if name.endswith('weight') else 'Add'}-op0"
        item.parallel_strategys.stage = stage
        dev, tmap = layout_of(name)
        s = item.parallel_strategys.parallel_strategy.add()
        s.dim.extend([1 if m == -1 else dev[len(dev) - 1 - m] for m in tmap])
    for name in param_names:
        dev, tmap = layout_of(name)
        li = sm.parallel_layout_item.add()
        li.param_name = name
        lay = li.parallel_layouts
        lay.dev_matrix.add().dim.extend(dev)
        lay.tensor_map.add().dim.extend(tmap)
        lay.param_split_shape.add()
        lay.indices_offset.add()
        lay.field = 0
        lay.opt_weight_shard_step = 0
        lay.opt_weight_shard_size = 0
    return sm.SerializeToString()


def main(out_dir, keep_full=False):
    import onnx
    import onnxruntime as ort

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(7)
    rng = np.random.default_rng(2024)
    net = Net()
    weights = {}
    for p in net.get_parameters():
        if p.name.endswith("gamma"):
            value = 1.0 + 0.1 * rng.standard_normal(p.shape)
        elif p.name.endswith(("bias", "beta")):
            value = 0.05 * rng.standard_normal(p.shape)
        else:
            value = rng.standard_normal(p.shape) / np.sqrt(p.shape[1])
        value = value.astype(np.float32)
        p.set_data(Tensor(value))
        weights[p.name] = value

    x = rng.standard_normal((1, D_IN)).astype(np.float32)
    ms_out = net(Tensor(x)).asnumpy()

    work = tempfile.mkdtemp(prefix="shardserve-example-")
    try:
        # 1. The single-device network, exported by MindSpore.
        ms.export(net, Tensor(x), file_name=os.path.join(work, "net_full"), file_format="ONNX")
        full_path = os.path.join(work, "net_full.onnx")
        full = onnx.load(full_path)
        session = ort.InferenceSession(full_path, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        output_name = session.get_outputs()[0].name
        expected = session.run(None, {input_name: x})[0]

        if keep_full:
            shutil.copyfile(full_path, os.path.join(out_dir, "net_full.onnx"))  # with the weights; not committed
        graph = onnx.load(full_path)
        for init in graph.graph.initializer:
            if init.name in weights:
                init.raw_data = bytes(len(init.raw_data))
        model_dir = os.path.join(out_dir, "model")
        os.makedirs(model_dir, exist_ok=True)
        onnx.save(graph, os.path.join(model_dir, "net.onnx"))
        initializer_names = {i.name for i in full.graph.initializer}
        missing = sorted(set(weights) - initializer_names)
        if missing:
            raise SystemExit(f"MindSpore's ONNX export renamed parameters {missing}; the example expects checkpoint names")

        # 2. The sharded checkpoint: rank r = stage * 2 + local holds its slice of its stage's parameters.
        ckpt_root = os.path.join(out_dir, "checkpoint")
        shutil.rmtree(ckpt_root, ignore_errors=True)
        for rank in range(WORLD):
            stage, local = divmod(rank, STAGE_DEVICES)
            records = []
            for name, value in weights.items():
                if stage_of(name) != stage:
                    continue
                dev, tmap = layout_of(name)
                records.append({"name": name, "data": Tensor(slice_for(value, dev, tmap, local))})
            os.makedirs(os.path.join(ckpt_root, f"rank_{rank}"), exist_ok=True)
            ms.save_checkpoint(records, os.path.join(ckpt_root, f"rank_{rank}", "net.ckpt"))

        # 3. The strategy: one file per rank (pipeline training writes one per rank), and MindSpore's merge.
        strat_dir = os.path.join(out_dir, "strategy")
        shutil.rmtree(strat_dir, ignore_errors=True)
        os.makedirs(strat_dir)
        for rank in range(WORLD):
            stage = rank // STAGE_DEVICES
            names = [n for n in weights if stage_of(n) == stage]
            with open(os.path.join(strat_dir, f"strategy_rank{rank}.ckpt"), "wb") as f:
                f.write(strategy_file(stage, names))
        merged = os.path.join(out_dir, "strategy_merged.ckpt")
        ms.merge_pipeline_strategys(strat_dir, merged)

        # 4. Oracle: MindSpore's transform_checkpoints merges the slices back to single-device weights.
        oracle_dir = os.path.join(work, "merged")
        ms.transform_checkpoints(ckpt_root, oracle_dir, "merged", src_strategy_file=merged, dst_strategy_file=None)
        merged_ckpt = os.path.join(oracle_dir, "rank_0", "merged0.ckpt")
        restored = ms.load_checkpoint(merged_ckpt)
        for name, value in weights.items():
            got = restored[name].asnumpy()
            if got.shape != value.shape or not np.array_equal(got, value):
                raise SystemExit(f"MindSpore's merge of the slices differs from the weights for {name}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # 5. A sample request (Open Inference Protocol JSON) with the answer onnxruntime gives on the merged model.
    sample = {
        "inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape), "data": [float(v) for v in x.ravel()]}],
        "expected_outputs": [{"name": output_name, "datatype": "FP32", "shape": list(expected.shape),
                              "data": [float(v) for v in expected.ravel()]}],
        "mindspore_output_max_abs_diff": float(np.max(np.abs(ms_out - expected))),
    }
    with open(os.path.join(out_dir, "sample.json"), "w") as f:
        json.dump(sample, f, indent=1)
        f.write("\n")
    manifest = {
        "modelName": "example",
        "model": "model/net.onnx",
        "checkpoint": "checkpoint",
        "strategy": "strategy",
        "mergedStrategy": "strategy_merged.ckpt",
        "sample": "sample.json",
        "training": {"world": WORLD, "pipelineStages": STAGES, "tensorParallel": STAGE_DEVICES},
        "inference": {"world": STAGES, "pipelineStages": STAGES, "tensorParallel": 1},
        "parameterStages": {name: stage_of(name) for name in weights},
        "mindsporeVersion": ms.__version__,
        "onnxruntimeVersion": ort.__version__,
    }
    with open(os.path.join(out_dir, "example.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(json.dumps({"out": out_dir, "input": input_name, "output": output_name,
                      "mindspore_vs_onnxruntime_max_abs_diff": sample["mindspore_output_max_abs_diff"]}))


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--keep-full"]
    main(os.path.abspath(args[0] if args else os.path.dirname(os.path.abspath(__file__))), keep_full="--keep-full" in sys.argv)
