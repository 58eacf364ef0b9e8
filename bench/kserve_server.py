"""KServe's Python model server (the `kserve` package) serving an ONNX file with onnxruntime, as a
peer to compare shardserve's front door with (npm run bench:serve). Configured by environment:

  KSB_MODEL_PATH, KSB_MODEL_NAME, KSB_HTTP_PORT, KSB_GRPC_PORT  what to serve and where
  KSB_INPUT_SHAPE (JSON)                                        the benchmark's input shape
  KSB_REPORT                                                    JSON file: onnxruntime's own p50 in this process

Before serving it times session.run on the same input so the benchmark can subtract the model's
compute from KServe's end-to-end latency (its front-door overhead). While serving it also times
every session.run inside predict: on SIGUSR1 it writes those (count, mean, p50 in ms) to
KSB_REPORT + ".runs" and starts counting afresh, so the benchmark can subtract the compute of the
requests of one measured round (its short warm-up included).
"""
import importlib.metadata
import json
import os
import signal
import time

import numpy as np
import onnxruntime as ort
import kserve
from kserve import InferOutput, InferRequest, InferResponse

path = os.environ["KSB_MODEL_PATH"]
name = os.environ["KSB_MODEL_NAME"]
shape = json.loads(os.environ["KSB_INPUT_SHAPE"])


def session_options():
    # The same settings shardserve's stage sessions use: one intra-op thread, basic graph optimization.
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return so


RUN_MS = []


def report_runs(_signum, _frame):
    runs = sorted(RUN_MS)
    RUN_MS.clear()
    out = {"count": len(runs), "mean_ms": sum(runs) / len(runs) if runs else None, "p50_ms": runs[len(runs) // 2] if runs else None}
    tmp = os.environ["KSB_REPORT"] + ".runs.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, os.environ["KSB_REPORT"] + ".runs")


class OnnxModel(kserve.Model):
    def __init__(self):
        super().__init__(name)
        self.session = None
        self.load()

    def load(self):
        self.session = ort.InferenceSession(path, session_options(), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.ready = True
        return True

    def predict(self, payload: InferRequest, headers=None, response_headers=None):
        feeds = {t.name: t.as_numpy() for t in payload.inputs}
        t0 = time.perf_counter()
        results = self.session.run(None, feeds)
        RUN_MS.append((time.perf_counter() - t0) * 1000)
        # KServe's fastest path for each protocol: raw bytes back when the request came with raw
        # gRPC contents (as the benchmark's are), JSON values for a JSON REST request.
        binary = payload.use_binary_outputs
        outputs = []
        for n, arr in zip(self.output_names, results):
            o = InferOutput(name=n, shape=list(arr.shape), datatype="FP32")
            o.set_data_from_numpy(arr, binary_data=binary)
            outputs.append(o)
        return InferResponse(response_id=payload.id or "", model_name=name, infer_outputs=outputs, use_binary_outputs=binary)


if __name__ == "__main__":
    model = OnnxModel()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    feeds = {model.input_names[0]: x}
    for _ in range(20):
        model.session.run(None, feeds)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        model.session.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    RUN_MS.clear()
    signal.signal(signal.SIGUSR1, report_runs)
    with open(os.environ["KSB_REPORT"], "w") as f:
        json.dump({"ort_p50_ms": times[len(times) // 2], "kserve": importlib.metadata.version("kserve"), "onnxruntime": ort.__version__}, f)
    kserve.ModelServer(http_port=int(os.environ["KSB_HTTP_PORT"]), grpc_port=int(os.environ["KSB_GRPC_PORT"]), workers=1).start([model])
