"""The real tritonserver on a generated repository: concurrent HTTP and gRPC load with bad requests
mixed in, damaged models that fail alone, BLS through the server, and a clean stop.

The server is the one bundled in the ``nvidia-pytriton`` wheel (the ``serve`` extra), on loopback
with free ports. It has only the Python backend, so the BLS layout's graph models run here as
Python-backend models that execute their ``model.onnx`` with ONNX Runtime, standing in for the
``onnxruntime`` backend of NVIDIA's server containers: the sampler's BLS calls go through the real
server all the same.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_spec

from harmonica_compile.errors import RuntimeBackendError
from harmonica_compile.runtime import open_engine
from harmonica_compile.sampling import generate
from harmonica_compile.serving import TritonServer, build_repository, find_tritonserver
from harmonica_compile.serving.repository import python_path
from harmonica_compile.serving.server import free_port

httpclient = pytest.importorskip("tritonclient.http", reason="needs the serve extra: pip install -e '.[serve]'")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs the serve extra: pip install -e '.[serve]'")
try:
    find_tritonserver()
except RuntimeBackendError as e:  # pragma: no cover - the serve extra installs the server
    pytest.skip(f"no tritonserver: {e}", allow_module_level=True)

pytestmark = pytest.mark.slow

MODEL = "harmonica_sampler"

#: The stand-in for Triton's onnxruntime backend (see the module docstring).
ORT_STANDIN = """
import json, os, site, sys
_here = os.path.dirname(os.path.abspath(__file__))
for _p in json.load(open(os.path.join(_here, "python_path.json"))):
    site.addsitedir(_p)
import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        path = os.path.join(_here, "model.onnx")
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        out = []
        for r in requests:
            feeds = {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs}
            values = self.session.run(None, feeds)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.outputs, values)]))
        return out
"""


def _standin_graph_models(repo: Path, prefix: str) -> None:
    for folder in sorted(repo.glob(f"{prefix}_g*")):
        cfg = folder / "config.pbtxt"
        cfg.write_text(cfg.read_text().replace('backend: "onnxruntime"', 'backend: "python"'))
        (folder / "1" / "model.py").write_text(ORT_STANDIN)
        (folder / "1" / "python_path.json").write_text(json.dumps(python_path()))


def _stub_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the server and its backend stubs)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and proc.name != str(os.getpid()):
                pids.append(int(proc.name))
    return pids


@pytest.fixture(scope="module")
def repo(served_engine, tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    build_repository(served_engine, repo)
    build_repository(served_engine, repo, name="bad_manifest")
    manifest = repo / "bad_manifest" / "1" / "engine" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["created"] = "2000-01-01T00:00:00Z"
    manifest.write_text(json.dumps(data))
    build_repository(served_engine, repo, name="bad_graph")
    with open(repo / "bad_graph" / "1" / "engine" / "graph_001.onnx", "ab") as f:
        f.write(b"\0")
    build_repository(served_engine, repo, name="bls", layout="bls")
    _standin_graph_models(repo, "bls")
    return repo


@pytest.fixture(scope="module")
def server(repo):
    server = TritonServer(repo)
    with server:
        yield server


@pytest.fixture(scope="module")
def references(served_engine):
    """``sample --engine`` for each (seed, label): generate() over ONNX Runtime, one image at a time."""
    spec, runner = tiny_spec(), open_engine(served_engine)
    return {
        s: generate(spec, runner, num=1, steps=4, seed=s, labels=torch.tensor([s % 10]))[0][0].numpy()
        for s in range(32)
    }


def _inputs(module, values):
    out = []
    for name, array in values.items():
        dtype = {np.int64: "INT64", np.int32: "INT32", np.float32: "FP32"}[array.dtype.type]
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _infer(server, protocol, values, model=MODEL):
    """One request over a fresh client; the image or the error message."""
    if protocol == "http":
        client = httpclient.InferenceServerClient(server.http_url)
        module = httpclient
    else:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        module = grpcclient
    try:
        result = client.infer(model, _inputs(module, values))
        return result.as_numpy("image")
    except Exception as e:  # tritonclient raises InferenceServerException
        return f"ERROR {e}"
    finally:
        client.close()


def _good(seed):
    return {"seed": np.array([[seed]], np.int64), "class_label": np.array([[seed % 10]], np.int64)}


BAD = {
    "missing input": ({"seed": np.array([[1]], np.int64)}, "input 'class_label' is missing"),
    "wrong dtype": (
        {"seed": np.array([[1]], np.int32), "class_label": np.array([[1]], np.int64)},
        "inference input 'seed' data-type is 'INT32', but model 'harmonica_sampler' expects 'INT64'",
    ),
    "wrong shape": (
        {"seed": np.array([[1, 2]], np.int64), "class_label": np.array([[1, 2]], np.int64)},
        "input 'seed' has shape [1, 2], expected [batch, 1]",
    ),
    "label out of range": (
        _good(3) | {"class_label": np.array([[10]], np.int64)},
        "input 'class_label' is 10, outside [0, 9]",
    ),
    "num_steps": (
        _good(3) | {"num_steps": np.array([[20]], np.int64)},
        "input 'num_steps' is 20, but the served schedule has 4",
    ),
    "batch beyond profile": (
        {"seed": np.arange(5, dtype=np.int64)[:, None], "class_label": np.zeros((5, 1), np.int64)},
        "batch-size must be <= 4",
    ),
}


def test_damaged_models_fail_to_load_naming_the_file_and_the_others_serve(server):
    states = {m["name"]: m for m in server.models()}
    assert states[MODEL]["state"] == "READY" and states["bls"]["state"] == "READY"
    assert states["bad_manifest"]["state"] == "UNAVAILABLE"
    assert "bad_manifest/1/engine/manifest.json fails its checksum" in states["bad_manifest"]["reason"]
    assert states["bad_graph"]["state"] == "UNAVAILABLE"
    assert "bad_graph/1/engine/graph_001.onnx fails its checksum" in states["bad_graph"]["reason"]


def test_concurrent_load_with_bad_requests(server, references):
    """32 good requests (half HTTP, half gRPC) and 12 bad ones at once. The served images equal
    ``sample --engine`` within 1e-5 (the acceptance bound; the same graphs on the same rows, in
    batches of another size: ONNX Runtime's CPU kernels give the same values here)."""
    before = server.statistics(MODEL)
    jobs = [(f"good {s}", "http" if s % 2 else "grpc", _good(s)) for s in range(32)]
    for k, (name, (values, _msg)) in enumerate(BAD.items()):
        for protocol in ("http", "grpc"):
            jobs.insert(3 + 5 * k + (protocol == "grpc"), (name, protocol, values))
    with cf.ThreadPoolExecutor(max_workers=24) as pool:
        results = list(pool.map(lambda job: _infer(server, job[1], job[2]), jobs))
    for (name, protocol, values), result in zip(jobs, results, strict=True):
        if name.startswith("good"):
            assert not isinstance(result, str), f"{name} over {protocol}: {result}"
            np.testing.assert_allclose(result[0], references[int(values["seed"][0, 0])], atol=1e-5, rtol=0)
        else:
            assert isinstance(result, str) and BAD[name][1] in result, f"{name} over {protocol}: {result}"
            assert "\n" not in result
    after = server.statistics(MODEL)
    served = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    executions = after["execution_count"] - before["execution_count"]
    inferences = after["inference_count"] - before["inference_count"]
    # Triton counts a request our model answered with an error as a successful execution too
    assert served >= 32
    assert executions < inferences, (executions, inferences)  # dynamic batching gathered requests
    assert max(b["batch_size"] for b in after["batch_stats"]) > 1


def test_bls_layout_through_the_server(server, references):
    """The bls sampler calls each step's graph as another model of the server (here the ORT stand-in)."""
    with cf.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda s: _infer(server, "http", _good(s), model="bls"), range(6)))
    for s, result in enumerate(results):
        assert not isinstance(result, str), result
        np.testing.assert_allclose(result[0], references[s], atol=1e-5, rtol=0)
    graph_calls = sum(server.statistics(f"bls_g{g}")["inference_count"] for g in (0, 1))
    assert graph_calls >= 4  # 4 steps per loop, each one graph call


def test_stop_ends_the_server_and_its_stubs(server, repo):
    assert _stub_processes(str(repo)), "the server's stubs should be running before stop"
    server.stop()
    deadline = time.monotonic() + 10
    while _stub_processes(str(repo)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _stub_processes(str(repo)) == []


def test_serve_command_starts_serves_and_stops_on_ctrl_c(served_engine, tmp_path):
    ports = [str(free_port()) for _ in range(3)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-m", "harmonica_compile", "serve", str(served_engine), "--http-port", ports[0]]
    cmd += ["--grpc-port", ports[1], "--metrics-port", ports[2], "--name", "cli_sampler"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("serving"):
                break
        text = "".join(lines)
        assert "model cli_sampler: READY" in text and f"HTTP 127.0.0.1:{ports[0]}" in text, text
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        result = client.infer("cli_sampler", _inputs(httpclient, _good(0)))
        client.close()
        assert result.as_numpy("image").shape == (1, 2, 8, 8)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert "stopping tritonserver" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _stub_processes("cli_sampler") == []
