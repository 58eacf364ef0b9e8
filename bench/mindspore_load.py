#!/usr/bin/env python3
"""MindSpore's own distributed loader for ONE inference rank, measured (the baseline for `npm run bench:load`).

usage: mindspore_load.py --checkpoint DIR --strategy FILE|DIR [--dst-strategy FILE] --rank R
                         [--dec-key HEX --dec-mode MODE]

DIR holds rank_<N>/*.ckpt (or *.safetensors) as MindSpore training leaves it. What runs is what a MindSpore user
does for one inference process:
  * no --dst-strategy (single-device inference of the stage holding source rank R):
      ckpt: load_distributed_checkpoint(net, <every file of that stage>, predict_strategy=None,
            train_strategy_filename=<that stage's strategy>) into a trivial Cell holding Parameters with the
            checkpoint's names and full shapes (MindSpore's documented single-device path);
      a merged pipeline strategy: transform_checkpoint_by_rank to an unsharded destination;
      safetensors: transform_checkpoints(output_format="safetensors") of the needed rank dirs (MindSpore 2.10.0's
      transform_safetensors_by_rank fails on its own files), then load_checkpoint;
  * --dst-strategy (inference rank R of a sharded destination): rank_list_for_transform(R, src, dst), then
      transform_checkpoint_by_rank / transform_safetensors_by_rank with exactly those files, then
      load_checkpoint of the result (MindSpore's documented offline per-rank conversion + load;
      load_distributed_checkpoint with a predict strategy needs a compiled Ascend/GPU graph).
MindSpore reads every file it is given completely.

Prints ONE JSON line: {"wallMs", "peakRssBytes", "baselineRssBytes", "bytesRead", "inputFiles", "inputFileBytes",
"method", "rank", "tensors", "mindspore"}. bytesRead is the process's rchar delta (bytes returned by read()
calls); pages MindSpore mmaps (safetensors) are not counted there, inputFileBytes is what it was given.
wallMs and bytesRead cover only the load (imports, argument checks
and building the Cell are excluded); peakRssBytes is the process peak (resource.getrusage ru_maxrss), which includes
the MindSpore import (baselineRssBytes = the same peak measured just before the load).
"""
import argparse
import glob
import json
import os
import re
import resource
import shutil
import struct
import sys
import tempfile
import time

os.environ.setdefault("GLOG_v", "3")


def fail(msg):
    print(f"mindspore_load.py: {msg}", file=sys.stderr)
    sys.exit(2)


def rank_files(ckpt_dir):
    """rank -> the file MindSpore's transform tools pick (last in sorted order in rank_<N>/)."""
    out = {}
    for d in glob.glob(os.path.join(ckpt_dir, "rank_*")):
        m = re.fullmatch(r"rank_(\d+)", os.path.basename(d))
        if not m or not os.path.isdir(d):
            continue
        files = sorted(glob.glob(os.path.join(d, "*.ckpt"))) or sorted(glob.glob(os.path.join(d, "*.safetensors")))
        if files:
            out[int(m.group(1))] = files[-1]
    if not out:
        fail(f"--checkpoint {ckpt_dir}: no rank_<N>/*.ckpt or *.safetensors found")
    return out


def read_varint(f):
    shift = result = 0
    while True:
        b = f.read(1)
        if not b:
            raise EOFError
        result |= (b[0] & 0x7F) << shift
        if b[0] < 0x80:
            return result
        shift += 7


def ckpt_headers(path):
    """name -> (tensor_type, dims) by walking the records and seeking past tensor_content (no full read)."""
    out = {}
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(4) in (struct.pack("<I", 0x7F3A5ED8), struct.pack("<I", 0x7F3A5ED9), struct.pack("<I", 0x7F3A5EDA)):
            raise ValueError("encrypted")
        f.seek(max(0, size - 17))
        end = size - 17 if f.read(7) == b"crc_num" else size
        f.seek(0)
        while f.tell() < end:
            key = read_varint(f)
            length = read_varint(f)
            if key != 0x0A:
                f.seek(length, 1)
                continue
            stop = f.tell() + length
            tag, ttype, dims = None, None, []
            while f.tell() < stop:
                k = read_varint(f)
                n = read_varint(f)
                if k == 0x0A:
                    tag = f.read(n).decode()
                elif k == 0x12:  # TensorProto
                    tstop = f.tell() + n
                    while f.tell() < tstop:
                        tk = read_varint(f)
                        if tk == 0x08:
                            dims.append(read_varint(f))
                        elif tk == 0x0A:  # packed dims
                            pn = read_varint(f)
                            pend = f.tell() + pn
                            while f.tell() < pend:
                                dims.append(read_varint(f))
                        else:
                            tn = read_varint(f)
                            if tk == 0x12:
                                ttype = f.read(tn).decode()
                            else:
                                f.seek(tn, 1)
                else:
                    f.seek(n, 1)
            f.seek(stop)
            if tag is not None and tag not in out:
                out[tag] = (ttype, dims)
    return out


def safetensors_headers(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}


def rchar():
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--strategy", required=True)
    ap.add_argument("--dst-strategy")
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--dec-key")
    ap.add_argument("--dec-mode", default="AES-GCM")
    args = ap.parse_args()
    if not os.path.isdir(args.checkpoint):
        fail(f"--checkpoint {args.checkpoint}: not a directory")
    if not os.path.exists(args.strategy):
        fail(f"--strategy {args.strategy}: no such file or directory")
    if args.dst_strategy and not os.path.isfile(args.dst_strategy):
        fail(f"--dst-strategy {args.dst_strategy}: no such file")
    files = rank_files(args.checkpoint)
    fmt = "safetensors" if next(iter(files.values())).endswith(".safetensors") else "ckpt"
    if args.dec_key and (fmt == "safetensors" or args.dst_strategy):
        fail("--dec-key: MindSpore decrypts only in load_checkpoint/load_distributed_checkpoint (ckpt, no --dst-strategy)")

    import mindspore as ms
    from mindspore import Parameter, Tensor, nn
    from mindspore.common import dtype as mstype

    tmp = tempfile.mkdtemp(prefix="ms-load-bench-")
    try:
        # the training strategy as MindSpore's loaders want it: one file (merge per-rank/per-stage files first)
        stage_files = {}
        if os.path.isdir(args.strategy):
            merged = os.path.join(tmp, "merged_strategy.ckpt")
            sfiles = sorted(glob.glob(os.path.join(args.strategy, "*.ckpt"))) or sorted(glob.glob(os.path.join(args.strategy, "*.json")))
            if not sfiles:
                fail(f"--strategy {args.strategy}: no *.ckpt or *.json strategy files")
            if sfiles[0].endswith(".json"):
                merged = merged[:-5] + ".json"
            ms.parallel.merge_pipeline_strategys(args.strategy, merged)
            for f in sfiles:  # one strategy file per stage for load_distributed_checkpoint
                one = ms.build_searched_strategy(f)
                st = _stage_of(ms, f)
                if one and st not in stage_files:
                    stage_files[st] = f
            src_strategy = merged
        else:
            src_strategy = args.strategy
        layouts = ms.build_searched_strategy(src_strategy)
        stages = sorted({int(k.split("-", 1)[0]) for k in layouts if re.match(r"^\d+-", k)}) or [0]
        first = next(iter(layouts.values()))
        dev_per_stage = 1
        for d in first.dev_matrix[0].dim:
            dev_per_stage *= d
        if args.rank < 0:
            fail(f"--rank {args.rank}: must be >= 0")

        t_kwargs = {}
        if args.dst_strategy:
            method = ("transform_checkpoints(all ranks -> every dst rank, safetensors) + load_checkpoint"
                      if fmt == "safetensors" else "rank_list_for_transform + transform_checkpoint_by_rank + load_checkpoint")
            needed = [int(r) for r in ms.rank_list_for_transform(args.rank, src_strategy, args.dst_strategy)]
            missing = [r for r in needed if r not in files]
            if missing:
                fail(f"--checkpoint {args.checkpoint}: rank(s) {missing} needed for destination rank {args.rank} are missing")
            inputs = {r: files[r] for r in needed}
            if fmt == "safetensors":  # transform_checkpoints converts every destination rank: it needs every file
                inputs = dict(files)
            net = None
        else:
            stage = args.rank // dev_per_stage
            if stage not in stages:
                fail(f"--rank {args.rank}: the strategy has stages {stages} of {dev_per_stage} devices")
            stage_ranks = [stage * dev_per_stage + i for i in range(dev_per_stage)]
            missing = [r for r in stage_ranks if r not in files]
            if missing:
                fail(f"--checkpoint {args.checkpoint}: rank(s) {missing} of stage {stage} are missing")
            inputs = {r: files[r] for r in stage_ranks}
            per_stage = stage_files.get(stage) if stage_files else (src_strategy if len(stages) == 1 else None)
            if fmt == "ckpt" and per_stage is not None:
                method = "load_distributed_checkpoint(predict_strategy=None)"
                dec = {"dec_key": bytes.fromhex(args.dec_key), "dec_mode": args.dec_mode} if args.dec_key else None
                net = _holder(ms, nn, Parameter, Tensor, mstype, layouts, per_stage, inputs, stage, len(stages) > 1, dec)
            else:
                method = ("transform_checkpoints(dst_strategy_file=None, safetensors) + load_checkpoint" if fmt == "safetensors"
                          else "transform_checkpoint_by_rank(dst_strategy_file=None) + load_checkpoint")
                net = None
                if fmt == "ckpt" and args.dec_key:
                    fail("--dec-key with a merged pipeline strategy: transform_checkpoint_by_rank cannot decrypt")

        input_bytes = sum(os.path.getsize(f) for f in inputs.values())
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        r0 = rchar()
        t0 = time.perf_counter()
        if method.startswith("load_distributed_checkpoint"):
            kw = {"dec_key": bytes.fromhex(args.dec_key), "dec_mode": args.dec_mode} if args.dec_key else {}
            ms.load_distributed_checkpoint(net, [inputs[r] for r in sorted(inputs)], predict_strategy=None,
                                           train_strategy_filename=per_stage, **kw)
            count = len(list(net.get_parameters()))
        else:
            dst = args.dst_strategy
            rank = args.rank if dst else 0
            if fmt == "safetensors":
                # transform_safetensors_by_rank is broken in MindSpore 2.10.0 (AttributeError: 'memoryview' object
                # has no attribute 'dtype'), so the rank dirs go through transform_checkpoints, which converts
                # every destination rank
                src = os.path.join(tmp, "src")
                for r, f in inputs.items():
                    os.makedirs(os.path.join(src, f"rank_{r}"))
                    os.symlink(os.path.abspath(f), os.path.join(src, f"rank_{r}", os.path.basename(f)))
                ms.transform_checkpoints(src, os.path.join(tmp, "out"), "out", src_strategy, dst, output_format="safetensors")
                out = sorted(glob.glob(os.path.join(tmp, "out", f"rank_{rank}", "*.safetensors")))[-1]
                loaded = ms.load_checkpoint(out, format="safetensors")
            else:
                out = os.path.join(tmp, "out.ckpt")
                ms.transform_checkpoint_by_rank(rank, inputs, out, src_strategy, dst)
                loaded = ms.load_checkpoint(out)
            count = len(loaded)
        wall = (time.perf_counter() - t0) * 1000
        read = rchar() - r0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps({"wallMs": round(wall, 3), "peakRssBytes": peak, "baselineRssBytes": baseline,
                          "bytesRead": read, "inputFiles": len(inputs), "inputFileBytes": input_bytes,
                          "method": method, "rank": args.rank, "tensors": count, "mindspore": ms.__version__}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stage_of(ms, strategy_file):
    if strategy_file.endswith(".json"):
        with open(strategy_file) as f:
            items = json.load(f).get("parallel_strategy_item") or {}
        return int(next(iter(items.values()))["stage"]) if items else 0
    from mindspore.train import node_strategy_pb2
    sm = node_strategy_pb2.ParallelStrategyMap()
    with open(strategy_file, "rb") as f:
        sm.ParseFromString(f.read())
    return sm.parallel_strategy_item[0].parallel_strategys.stage if sm.parallel_strategy_item else 0


def _holder(ms, nn, Parameter, Tensor, mstype, layouts, stage_strategy, inputs, stage, pipeline, dec=None):
    """A Cell with one Parameter per strategy parameter of the stage: full shape = slice shape x parts (x opt)."""
    import numpy as np
    stage_layouts = ms.build_searched_strategy(stage_strategy)
    first_rank = min(inputs)
    f = inputs[first_rank]
    heads = safetensors_headers(f) if f.endswith(".safetensors") else _headers_or_load(ms, f, dec)
    types = {"Float32": mstype.float32, "Float16": mstype.float16, "BFloat16": mstype.bfloat16, "Float64": mstype.float64,
             "Int8": mstype.int8, "UInt8": mstype.uint8, "Int16": mstype.int16, "Int32": mstype.int32,
             "Int64": mstype.int64, "Bool": mstype.bool_}
    cell = nn.Cell(auto_prefix=False)
    i = 0
    for name, lay in stage_layouts.items():
        if name not in heads:
            continue
        ttype, dims = heads[name]
        D = list(lay.dev_matrix[0].dim)
        maps = [list(t.dim) for t in lay.tensor_map if list(t.dim)] if len(lay.tensor_map) > 1 else [[m] for m in lay.tensor_map[0].dim]
        full = []
        for d, m in enumerate(maps):
            parts = 1
            for a in m:
                if a != -1:
                    parts *= D[len(D) - 1 - a]
            full.append(dims[d] * parts)
        if lay.opt_weight_shard_size and full:
            k = lay.opt_weight_shard_size
            if k == -1:
                k = int(np.prod(D)) // max(1, int(np.prod([f // s for f, s in zip(full, dims)])))
            full[0] *= k
        split = list(lay.param_split_shape[0].dim) if lay.param_split_shape else []
        if split:
            full[0] = int(sum(split))
        setattr(cell, f"p{i}", Parameter(Tensor(np.zeros(full, np.float32), types.get(ttype, mstype.float32)), name=name))
        i += 1
    return cell


def _headers_or_load(ms, path, dec):
    try:
        return ckpt_headers(path)
    except ValueError:  # encrypted: only MindSpore can read it (this full load happens before the measured region)
        return {k: (str(v.dtype), list(v.shape)) for k, v in ms.load_checkpoint(path, **(dec or {})).items()
                if not isinstance(v, str)}


if __name__ == "__main__":
    main()
