"""TensorRT: op coverage and trtexec command lines (no library needed); engine builds need it."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import tiny_spec

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.errors import ConfigError, RuntimeBackendError
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.exporters.tensorrt import check_op_coverage, export_tensorrt, supported_ops
from harmonica_compile.exporters.trtexec import trtexec_command, write_trtexec_script

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
    torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-2)
