"""TensorRT: op coverage and trtexec command lines (no library needed); engine builds need it."""

from __future__ import annotations

import importlib.util
import shlex
import shutil
import subprocess

import numpy as np
import pytest
from helpers import tiny_spec

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.errors import ConfigError, RuntimeBackendError
from harmonica_compile.exporters.manifest import load_manifest
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.exporters.tensorrt import (
    GPU_SLUG_SED,
    check_op_coverage,
    export_tensorrt,
    slugify_gpu_name,
    supported_ops,
)
from harmonica_compile.exporters.trtexec import trtexec_command, write_trtexec_inputs, write_trtexec_script

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
INPUTS = [
    {"name": "x", "shape": ["batch", 1, 16, 16]},
    {"name": "t", "shape": ["batch"]},
    {"name": "cache.blocks.0.mlp", "shape": ["batch", 64, 128]},
]


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory):
    spec = tiny_spec()
    sites = spec.cacheable().site_names
    schedule = CacheSchedule.fora(sites, 4, 2, timesteps=[float(t) for t in spec.sampler(4).timesteps])
    out = tmp_path_factory.mktemp("trt") / "onnx"
    export_onnx(cached_for_spec(spec, schedule), out, model_name=spec.name, sampler=spec.sampler(4), max_batch=16)
    return out, spec, schedule


def test_support_matrix_is_data_with_its_source():
    table = supported_ops()
    assert table["source"].startswith("onnx/onnx-tensorrt docs/operators.md")
    assert {"MatMul", "Softmax", "LayerNormalization", "Einsum", "Where", "Gather"} <= set(table["supported"])
    assert "NonMaxSuppression" in table["supported"] and "Unique" in table["unsupported"]
    assert not set(table["supported"]) & set(table["unsupported"])


def test_every_op_of_our_graphs_is_parsed_by_tensorrt(onnx_folder):
    folder, _, _ = onnx_folder
    report = check_op_coverage(folder)
    assert report["unsupported"] == []
    assert report["opset_in_range"] and report["opsets"] == [18]
    assert {"MatMul", "Softmax", "LayerNormalization"} <= set(report["ops"])


def test_unsupported_ops_are_named(onnx_folder, tmp_path, monkeypatch):
    import harmonica_compile.exporters.tensorrt as trt_mod

    folder, _, _ = onnx_folder
    table = supported_ops()
    table["supported"] = [op for op in table["supported"] if op != "Softmax"]
    monkeypatch.setattr(trt_mod, "supported_ops", lambda: table)
    assert check_op_coverage(folder)["unsupported"] == ["Softmax"]


def test_trtexec_10_has_precision_and_cuda_graph_flags():
    cmd = trtexec_command(
        "g.onnx",
        "g.plan",
        INPUTS,
        trt_major=10,
        min_batch=1,
        opt_batch=4,
        max_batch=16,
        fp16=True,
        timing_cache="tc.cache",
    )
    assert cmd[:3] == ["trtexec", "--onnx=g.onnx", "--saveEngine=g.plan"]
    assert "--minShapes=x:1x1x16x16,t:1,cache.blocks.0.mlp:1x64x128" in cmd
    assert "--optShapes=x:4x1x16x16,t:4,cache.blocks.0.mlp:4x64x128" in cmd
    assert "--maxShapes=x:16x1x16x16,t:16,cache.blocks.0.mlp:16x64x128" in cmd
    assert {
        "--fp16",
        "--useCudaGraph",
        "--separateProfileRun",
        "--timingCacheFile=tc.cache",
        "--builderOptimizationLevel=3",
        "--dumpProfile",
    } <= set(cmd)


def test_trtexec_11_is_strongly_typed():
    cmd = trtexec_command("g.onnx", "g.plan", INPUTS, trt_major=11)
    assert not {"--fp16", "--int8", "--best", "--stronglyTyped", "--useCudaGraph", "--separateProfileRun"} & set(cmd)
    assert any(c.startswith("--minShapes=") for c in cmd)
    with pytest.raises(ConfigError, match="strongly typed and has no --fp16.*autocast"):
        trtexec_command("g.onnx", "g.plan", INPUTS, trt_major=11, fp16=True)
    with pytest.raises(ConfigError, match="major version must be one of"):
        trtexec_command("g.onnx", "g.plan", INPUTS, trt_major=8)
    with pytest.raises(ConfigError, match="min_batch <= opt_batch"):
        trtexec_command("g.onnx", "g.plan", INPUTS, trt_major=10, opt_batch=32, max_batch=16)


@pytest.mark.parametrize("major", [10, 11])
def test_script_has_one_build_per_graph(onnx_folder, major):
    folder, _, _ = onnx_folder
    path = write_trtexec_script(folder, trt_major=major)
    lines = [line for line in path.read_text().splitlines() if line.startswith("trtexec ")]
    assert len(lines) == 2  # two distinct masks for FORA(2)
    assert all("--maxShapes=" in line and ".$GPU.trt" in line for line in lines)
    assert all(("--useCudaGraph" in line) == (major == 10) for line in lines)
    assert all("--noTF32" in line for line in lines)  # an fp32 build is fp32


@pytest.mark.parametrize("major", [10, 11])
def test_fp32_builds_turn_tf32_off_unless_asked(major):
    assert "--noTF32" in trtexec_command("g.onnx", "g.plan", INPUTS, trt_major=major)
    assert "--noTF32" not in trtexec_command("g.onnx", "g.plan", INPUTS, trt_major=major, tf32=True)


def test_script_times_every_graph_on_valid_inputs(onnx_folder):
    """trtexec's random int64 values would index the 11-row label embedding out of bounds: every
    input gets a file, labels come from the export's example inputs, timesteps are the step's."""
    folder, spec, _ = onnx_folder
    manifest = load_manifest(folder)
    path = write_trtexec_script(folder, trt_major=10)
    lines = [line for line in path.read_text().splitlines() if line.startswith("trtexec ")]
    opt = manifest.data["batch"]["opt"]
    for g, line in zip(manifest.graphs, lines, strict=True):
        argv = shlex.split(line)
        load = next(part for part in argv if part.startswith("--loadInputs="))
        shapes = next(part for part in argv if part.startswith("--shapes="))
        named = dict(item.split(":", 1) for item in load[len("--loadInputs=") :].split(","))
        assert set(named) == {i["name"] for i in g["inputs"]}
        assert all(f"{i['name']}:{opt}x" in shapes or f"{i['name']}:{opt}" in shapes for i in g["inputs"])
        for entry in g["inputs"]:
            file = folder / named[entry["name"]]
            shape = [opt if d == "batch" else d for d in entry["shape"]]
            values = np.fromfile(file, dtype=entry["dtype"]).reshape(shape)
            if entry["role"] == "condition":  # class labels, the null class included
                assert values.min() >= 0 and values.max() <= spec.null_class
            if entry["role"] == "timestep":
                first = next(s["timestep"] for s in manifest.steps if s["graph"] == g["id"])
                assert (values == first).all()


def test_inputs_tile_the_example_to_any_batch(onnx_folder):
    folder, _, _ = onnx_folder
    files = write_trtexec_inputs(folder, 5)
    manifest = load_manifest(folder)
    entry = next(i for i in manifest.graphs[0]["inputs"] if i["role"] == "latent")
    latent = np.fromfile(files[0][entry["name"]], dtype=np.float32).reshape(5, *entry["shape"][1:])
    assert np.array_equal(latent[0], latent[2]) and not np.array_equal(latent[0], latent[1])  # batch-2 example
    with pytest.raises(ConfigError, match="batch must be an integer >= 1"):
        write_trtexec_inputs(folder, 0)


@pytest.mark.skipif(shutil.which("sed") is None, reason="needs sed")
def test_script_and_python_name_gpus_alike():
    names = ["NVIDIA H200", "Tesla V100-SXM2-16GB", "NVIDIA GeForce RTX 4090", " NVIDIA A100-SXM4-80GB (MIG 1g.10gb) "]
    for name in names:
        shell = subprocess.run(["sed", "-E", GPU_SLUG_SED], input=name + "\n", capture_output=True, text=True)
        assert shell.stdout.strip() == slugify_gpu_name(name), name


def test_script_reads_the_gpu_name_with_the_shared_rule(onnx_folder):
    folder, _, _ = onnx_folder
    text = write_trtexec_script(folder, trt_major=11).read_text()
    assert GPU_SLUG_SED in text and "CUDA_VISIBLE_DEVICES" in text and "GPU=${GPU:-" in text


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed: the missing-library path does not apply")
def test_engine_build_without_tensorrt_says_what_is_missing(onnx_folder, tmp_path):
    folder, spec, schedule = onnx_folder
    with pytest.raises(RuntimeBackendError, match="TensorRT is not installed"):
        export_tensorrt(
            cached_for_spec(spec, schedule),
            tmp_path / "trt",
            model_name=spec.name,
            sampler=spec.sampler(4),
            onnx_dir=folder,
        )
    assert not (tmp_path / "trt").exists()


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAS_TRT, reason="tensorrt is not installed (its PyPI wheels need NVIDIA's runtime and a GPU)")
def test_engines_run_the_schedule(onnx_folder, tmp_path):  # pragma: no cover - needs a GPU
    import torch

    from harmonica_compile.runtime.tensorrt import TensorRTRunner
    from harmonica_compile.sampling import generate

    folder, spec, schedule = onnx_folder
    cached = cached_for_spec(spec, schedule)
    manifest = export_tensorrt(
        cached, tmp_path / "trt", model_name=spec.name, sampler=spec.sampler(4), onnx_dir=folder, max_batch=16
    )
    assert manifest.kind == "tensorrt" and manifest.data["engine_bytes_total"] > 0
    a, _ = generate(spec, TensorRTRunner(tmp_path / "trt"), num=2, steps=4)
    b, _ = generate(spec, spec.denoiser(cached), num=2, steps=4)
    # fp32 engines (TF32 off): the parity gate's whole-pipeline tolerance, as for ONNX Runtime
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-2)
