"""ONNX Runtime providers: the parity gate on the CPU provider, providers read back from sessions,
stated fallbacks, TensorRT EP only when asked (with caches and profiles), and one checksum pass.

This machine's onnxruntime is the CPU build. ONNX Runtime itself drops a provider it cannot start
(with a warning) and runs the session on the ones left, which is exactly what a CPU-only install
does when asked for CUDA: these tests make ``get_available_providers`` claim GPU providers and let
the real sessions fall back.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime
import pytest
import torch
from helpers import tiny_spec

from harmonica_compile import CacheSchedule
from harmonica_compile.api import cached_for_spec
from harmonica_compile.errors import ConfigError, RuntimeBackendError
from harmonica_compile.exporters import manifest as manifest_mod
from harmonica_compile.exporters.onnx import export_onnx
from harmonica_compile.runtime import open_engine
from harmonica_compile.runtime import ort as ort_mod
from harmonica_compile.runtime.bench import bench_engine
from harmonica_compile.runtime.ort import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    TENSORRT_PROVIDER,
    OrtRunner,
    default_providers,
    onnxruntime_install_problem,
    resolve_providers,
)
from harmonica_compile.runtime.parity import onnx_parity_gate
from harmonica_compile.sampling import generate

STEPS = 4
GPU_CLAIM = [TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER]


@pytest.fixture(scope="module")
def spec():
    return tiny_spec()


@pytest.fixture(scope="module")
def folder(spec, tmp_path_factory):
    sites = spec.cacheable().site_names
    schedule = CacheSchedule.fora(sites, STEPS, 2, timesteps=[float(t) for t in spec.sampler(STEPS).timesteps])
    out = tmp_path_factory.mktemp("prov") / "eng"
    export_onnx(cached_for_spec(spec, schedule), out, model_name=spec.name, sampler=spec.sampler(STEPS), max_batch=8)
    return out


@pytest.fixture
def claims_gpu(monkeypatch):
    """This onnxruntime claims the TensorRT and CUDA providers (as onnxruntime-gpu does)."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(GPU_CLAIM))


@pytest.fixture
def session_providers(monkeypatch):
    """Record the provider names every InferenceSession is created with."""
    seen: list[list[str]] = []
    real = onnxruntime.InferenceSession

    def spy(path, options=None, providers=None, **kw):
        seen.append([p[0] if isinstance(p, tuple) else p for p in providers or []])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ORT's own "not in available provider names" warning
            return real(path, options, providers=providers, **kw)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    return seen


def test_parity_gate_runs_on_the_cpu_provider_whatever_is_offered(spec, claims_gpu, session_providers, tmp_path):
    """With GPU providers on offer (TF32 by default, ~1e-4), the 1e-5 gate still asks for the CPU only."""
    sites = spec.cacheable().site_names
    schedule = CacheSchedule.fora(sites, STEPS, 2, timesteps=[float(t) for t in spec.sampler(STEPS).timesteps])
    cached = cached_for_spec(spec, schedule)
    sampler = spec.sampler(STEPS)
    gate = onnx_parity_gate(spec, sampler)
    export_onnx(cached, tmp_path / "eng", model_name=spec.name, sampler=sampler, spec=spec, max_batch=8, check=gate)
    assert session_providers  # the gate created sessions
    assert all(p == [CPU_PROVIDER] for p in session_providers)


def test_tensorrt_provider_only_when_asked(claims_gpu):
    assert default_providers() == [CUDA_PROVIDER, CPU_PROVIDER]
    assert resolve_providers([TENSORRT_PROVIDER, CPU_PROVIDER]) == ([TENSORRT_PROVIDER, CPU_PROVIDER], None)


def test_tensorrt_provider_gets_caches_and_the_manifest_profile(folder, claims_gpu):
    runner = OrtRunner(folder, providers=[TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER])
    for g in runner.manifest.graphs:
        (name, trt), (cuda, _), (cpu, _) = runner._provider_options(g["id"])
        assert (name, cuda, cpu) == (TENSORRT_PROVIDER, CUDA_PROVIDER, CPU_PROVIDER)
        assert trt["trt_engine_cache_enable"] == trt["trt_timing_cache_enable"] == "True"
        assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(folder / "ort_tensorrt_cache")
        assert trt["trt_fp16_enable"] == "False"
        batched = [i for i in g["inputs"] if i["shape"][0] == "batch"]
        for key, size in (("min", 1), ("opt", 8), ("max", 8)):
            parts = trt[f"trt_profile_{key}_shapes"].split(",")
            assert [p.split(":")[0] for p in parts] == [i["name"] for i in batched]
            assert all(p.split(":")[1].split("x")[0] == str(size) for p in parts)


def test_session_providers_not_requested_ones_decide_the_device(spec, folder, claims_gpu, session_providers):
    """Asked for CUDA then CPU on a CPU-only install: the sessions fall back to the CPU and the
    runner binds nothing to a device (this used to fail with "Can't allocate memory on the device")."""
    runner = OrtRunner(folder)
    assert runner.providers == [CUDA_PROVIDER, CPU_PROVIDER]
    images, _ = generate(spec, runner, num=2, steps=STEPS)
    assert session_providers and all(p == [CUDA_PROVIDER, CPU_PROVIDER] for p in session_providers)
    assert runner.active_providers == [CPU_PROVIDER] and not runner.on_gpu
    reference, _ = generate(spec, OrtRunner(folder, providers=[CPU_PROVIDER]), num=2, steps=STEPS)
    torch.testing.assert_close(images, reference, atol=0, rtol=0)


def test_a_provider_that_is_not_offered_is_a_stated_fallback_or_a_clear_error(folder):
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider not available, running on CPUExecutionProvider"):
        runner = OrtRunner(folder, providers=[CUDA_PROVIDER, CPU_PROVIDER])
    assert runner.providers == [CPU_PROVIDER] and "onnxruntime-gpu" in runner.provider_note
    with pytest.raises(
        RuntimeBackendError, match=r"cannot run on \['CUDAExecutionProvider'\].*harmonica-compile\[gpu\]"
    ):
        OrtRunner(folder, providers=[CUDA_PROVIDER])
    with pytest.raises(ConfigError, match="unknown ONNX Runtime providers"):
        OrtRunner(folder, providers=["CudaProvider"])


def test_both_onnxruntime_flavours_installed_is_named(monkeypatch):
    monkeypatch.setattr(ort_mod, "_installed_distributions", lambda: {"onnxruntime", "onnxruntime-gpu", "numpy"})
    problem = onnxruntime_install_problem()
    assert problem and "onnxruntime and onnxruntime-gpu are installed" in problem and "pip uninstall" in problem
    with pytest.raises(RuntimeBackendError, match="overwrite each other's files"):
        resolve_providers([CUDA_PROVIDER])
    monkeypatch.setattr(ort_mod, "_installed_distributions", lambda: {"onnxruntime-gpu"})
    assert onnxruntime_install_problem() is None


def test_the_installed_environment_has_one_onnxruntime():
    assert onnxruntime_install_problem() is None


def test_each_file_is_hashed_once_per_run(folder, spec, monkeypatch):
    calls: list[str] = []
    real = manifest_mod.sha256_file

    def counting(path):
        calls.append(path.name)
        return real(path)

    monkeypatch.setattr(manifest_mod, "sha256_file", counting)
    runner = open_engine(folder)
    generate(spec, runner, num=2, steps=STEPS)
    assert sorted(calls) == sorted(set(calls))  # every file once
    calls.clear()
    bench_engine(folder, images=2, repeat=1, warmup=0, model="helpers:tiny_spec", write=False)
    assert sorted(calls) == sorted(set(calls))


def test_runners_refuse_another_samplers_timesteps(folder, spec):
    runner = OrtRunner(folder)

    shifted = spec.sampler(STEPS)
    shifted.timesteps = [t - 1 for t in shifted.timesteps]
    with pytest.raises(RuntimeBackendError, match="belongs to another sampler"):
        runner.check_sampler(shifted)
    with pytest.raises(RuntimeBackendError, match="holds a 4-step schedule"):
        runner.check_sampler(spec.sampler(5))


def test_run_graph_returns_numpy_on_every_provider(folder):
    runner = OrtRunner(folder, providers=[CPU_PROVIDER])
    g = runner.manifest.graphs[0]
    arrays = []
    for entry in g["inputs"]:
        shape = [2 if d == "batch" else d for d in entry["shape"]]
        arrays.append(np.zeros(shape, dtype=entry["dtype"]))
    outs = runner.run_graph(0, arrays)
    assert all(isinstance(o, np.ndarray) for o in outs)


def test_gate_tolerance_is_relative_to_the_output_scale():
    """fp32 rounding follows the magnitudes a value was computed from: an element near zero in an
    output of scale 3 may carry ~1e-5 (measured 1.12e-5 on tiny-dit-digits' learned schedule), while
    TF32 (2**-11 relative on products) or a wiring mistake are far outside."""
    from harmonica_compile.runtime.parity import outputs_agree

    ref = np.array([3.0, -2.0, 0.0001], dtype=np.float32)
    assert outputs_agree(ref + np.array([0, 0, 1.12e-5], dtype=np.float32), ref)
    assert not outputs_agree(ref * (1 + 2.0**-11), ref)  # TF32-sized relative error
    assert not outputs_agree(ref + np.array([0, 0, 1e-3], dtype=np.float32), ref)
    small = np.array([0.5, 0.0], dtype=np.float32)  # scale below 1: the plain 1e-5
    assert outputs_agree(small + 9e-6, small) and not outputs_agree(small + 2e-5, small)
