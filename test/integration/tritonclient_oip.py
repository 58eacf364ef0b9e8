"""Drive the shardserve front door with NVIDIA's tritonclient (gRPC and HTTP), the way a KServe/Triton
user would. Prints one JSON document: what each call returned, with tensors as base64 raw bytes.

usage: tritonclient_oip.py GRPC_URL HTTP_URL MODEL INPUT_NAME INPUT_FILE SHAPE_JSON
"""
import base64
import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

grpc_url, http_url, model, input_name, input_file, shape_json = sys.argv[1:7]
shape = json.loads(shape_json)
x = np.fromfile(input_file, dtype=np.float32).reshape(shape)
b64 = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()
out = {}


def error_of(fn):
    try:
        fn()
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": e.message()}
    return None


# gRPC
g = grpcclient.InferenceServerClient(url=grpc_url)
meta = g.get_model_metadata(model, as_json=True)
out["grpc"] = {
    "live": g.is_server_live(),
    "ready": g.is_server_ready(),
    "model_ready": g.is_model_ready(model),
    "server": g.get_server_metadata(as_json=True),
    "model": meta,
}
inp = grpcclient.InferInput(input_name, list(x.shape), "FP32")
inp.set_data_from_numpy(x)
res = g.infer(model, [inp], request_id="triton-grpc-1")
out["grpc"]["id"] = res.get_response(as_json=True).get("id")
out["grpc"]["outputs"] = {o["name"]: {"shape": res.as_numpy(o["name"]).shape, "b64": b64(res.as_numpy(o["name"]))} for o in meta["outputs"]}
out["grpc"]["unknown_model"] = error_of(lambda: g.infer("no-such-model", [inp]))
bad = grpcclient.InferInput("not_" + input_name, list(x.shape), "FP32")
bad.set_data_from_numpy(x)
out["grpc"]["wrong_input"] = error_of(lambda: g.infer(model, [bad]))
g.close()

# HTTP (binary tensor data extension, the client's default) and JSON
h = httpclient.InferenceServerClient(url=http_url)
out["http"] = {
    "live": h.is_server_live(),
    "ready": h.is_server_ready(),
    "model_ready": h.is_model_ready(model),
    "server": h.get_server_metadata(),
    "model": h.get_model_metadata(model),
}
for binary in (True, False):
    hi = httpclient.InferInput(input_name, list(x.shape), "FP32")
    hi.set_data_from_numpy(x, binary_data=binary)
    outs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in meta["outputs"]]
    r = h.infer(model, [hi], outputs=outs, request_id="triton-http-1")
    out["http"]["binary" if binary else "json"] = {o["name"]: {"shape": r.as_numpy(o["name"]).shape, "b64": b64(r.as_numpy(o["name"]).astype(np.float32))} for o in meta["outputs"]}
out["http"]["unknown_model"] = error_of(lambda: h.infer("no-such-model", [hi]))
hb = httpclient.InferInput(input_name, [1, 1], "FP32")
hb.set_data_from_numpy(np.zeros((1, 1), dtype=np.float32))
out["http"]["wrong_shape"] = error_of(lambda: h.infer(model, [hb]))
h.close()

print(json.dumps(out, default=list))
