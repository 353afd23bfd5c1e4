"""export -> sample --engine -> bench through the CLI, on a small model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import fora_schedule_dir

from harmonica_compile.cli import main

MODEL = ["--model", "helpers:tiny_spec"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    fora_schedule_dir(root / "sched")
    return root


def test_export_then_sample_with_the_engine_equals_the_torch_path(folders, capsys):
    """ONNX Runtime against torch over whole trajectories: the parity gate's whole-pipeline
    tolerance (atol 1e-4, rtol 1e-2, the deployment stacks' convention for fp32 latents)."""
    eng = folders / "eng"
    assert main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--max-batch", "16"]) == 0
    assert "parity gate passed" in capsys.readouterr().out
    assert main(["sample", "--engine", str(eng), *MODEL, "--num", "6", "--quiet", "--out", str(folders / "a.npz")]) == 0
    assert (
        main(
            [
                "sample",
                *MODEL,
                "--steps",
                "4",
                "--schedule",
                str(folders / "sched"),
                "--num",
                "6",
                "--quiet",
                "--out",
                str(folders / "b.npz"),
            ]
        )
        == 0
    )
    a, b = np.load(folders / "a.npz"), np.load(folders / "b.npz")
    assert sorted(a.files) == sorted(b.files) == ["images", "labels", "meta"]
    np.testing.assert_allclose(a["images"], b["images"], atol=1e-4, rtol=1e-2)
    np.testing.assert_array_equal(a["labels"], b["labels"])
    assert a["images"].dtype == np.float32 and a["images"].shape == (6, 2, 8, 8)


def test_sample_with_an_engine_for_another_step_count(folders, capsys):
    eng = folders / "eng"
    if not eng.exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(eng)])
    code = main(["sample", "--engine", str(eng), *MODEL, "--steps", "7", "--out", str(folders / "c.npz")])
    assert code == 2 and "holds a 4-step schedule" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["ort", "torch"])
def test_bench_writes_bench_json(folders, runtime, capsys):
    eng = folders / "eng"
    if not eng.exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(eng)])
    assert main(["bench", str(eng), "--runtime", runtime, "--images", "2", "--repeat", "2"]) == 0
    result = json.loads((eng / f"bench-{runtime}.json").read_text())
    for key in ["full_ms_per_image", "cached_ms_per_image", "real_speedup", "theoretical_speedup", "per_step"]:
        assert key in result
    assert len(result["per_step"]) == 4 and result["runtime"] == runtime
    assert "real speedup" in capsys.readouterr().out


def test_trt_runtime_without_tensorrt(folders, capsys):
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed")
    eng = folders / "eng"
    if not eng.exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(eng)])
    code = main(["bench", str(eng), "--runtime", "trt"])
    assert code == 2 and "holds onnx graphs, not TensorRT engines" in capsys.readouterr().err


def test_defaults_work_together_for_any_num(folders, capsys):
    """export at its default --max-batch (64, counted in model batch), then sample --engine at its
    default --batch-size (64 images, 128 with guidance): the work is split to fit the engine."""
    eng = folders / "eng-default"
    assert main(["export", str(folders / "sched"), *MODEL, "--out", str(eng)]) == 0
    manifest = json.loads((eng / "manifest.json").read_text())
    assert manifest["batch"] == {"min": 1, "opt": 64, "max": 64}
    out = folders / "many.npz"
    assert main(["sample", "--engine", str(eng), *MODEL, "--num", "70", "--quiet", "--out", str(out)]) == 0
    assert "ran on ONNX Runtime" in capsys.readouterr().out
    assert np.load(out)["images"].shape[0] == 70


def test_small_engines_split_sampling_and_bench_and_give_the_same_images(folders, capsys):
    eng = folders / "eng-small"
    assert main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--max-batch", "4", "--no-check"]) == 0
    small, wide = folders / "small.npz", folders / "wide.npz"
    assert main(["sample", "--engine", str(eng), *MODEL, "--num", "5", "--quiet", "--out", str(small)]) == 0
    if not (folders / "eng").exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(folders / "eng"), "--max-batch", "16"])
    assert main(["sample", "--engine", str(folders / "eng"), *MODEL, "--num", "5", "--quiet", "--out", str(wide)]) == 0
    # same seeds and labels whatever the split; ORT kernels may block by batch size, so the two runs
    # agree within the trajectory tolerance of the parity gate (atol 1e-4, rtol 1e-2)
    np.testing.assert_allclose(np.load(small)["images"], np.load(wide)["images"], atol=1e-4, rtol=1e-2)
    np.testing.assert_array_equal(np.load(small)["labels"], np.load(wide)["labels"])
    capsys.readouterr()
    assert main(["bench", str(eng), "--images", "5", "--repeat", "1"]) == 0
    result = json.loads((eng / "bench-ort.json").read_text())
    assert result["images_per_call"] == 2 and result["model_batch"] == 4  # guidance doubles 2 images to 4
    assert result["providers"] == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in capsys.readouterr().out


def test_an_engine_too_small_for_one_guided_image_says_so(folders, capsys):
    eng = folders / "eng-one"
    assert main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--max-batch", "1", "--no-check"]) == 0
    code = main(["sample", "--engine", str(eng), *MODEL, "--num", "2", "--quiet", "--out", str(folders / "x.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "not even one image fits" in err and err.count("\n") == 1
    assert main(["sample", "--engine", str(eng), *MODEL, "--num", "2", "--cfg-scale", "1", "--quiet",
                 "--out", str(folders / "x.npz")]) == 0  # fmt: skip


def test_opt_batch_is_checked_and_recorded(folders, capsys):
    eng = folders / "eng-opt"
    code = main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--max-batch", "8", "--opt-batch", "16"])
    err = capsys.readouterr().err
    assert code == 2 and "min_batch <= opt_batch <= max_batch" in err and not eng.exists()
    assert main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--max-batch", "8", "--opt-batch",
                 "4", "--no-check"]) == 0  # fmt: skip
    data = json.loads((eng / "manifest.json").read_text())
    assert data["batch"] == {"min": 1, "opt": 4, "max": 8} and data["export_config"]["opt_batch"] == 4
    code = main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--fp16"])
    assert code == 2 and "--format tensorrt" in capsys.readouterr().err


def test_a_gpu_provider_on_a_cpu_machine_is_one_line_or_a_stated_fallback(folders, capsys):
    eng = folders / "eng"
    if not eng.exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--max-batch", "16"])
    out = str(folders / "gpu.npz")
    code = main(["sample", "--engine", str(eng), *MODEL, "--providers", "CUDAExecutionProvider", "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and "cannot run on ['CUDAExecutionProvider']" in err and err.count("\n") == 1
    both = "CUDAExecutionProvider,CPUExecutionProvider"
    with pytest.warns(RuntimeWarning):
        code = main(["sample", "--engine", str(eng), *MODEL, "--providers", both, "--quiet", "--out", out])
    captured = capsys.readouterr()
    assert code == 0 and "note: CUDAExecutionProvider not available, running on CPUExecutionProvider" in captured.err
    assert "on CPUExecutionProvider" in captured.out
    code = main(["bench", str(eng), "--runtime", "torch", "--providers", "CPUExecutionProvider"])
    assert code == 2 and "takes none" in capsys.readouterr().err


def test_each_runtime_writes_its_own_result_file(folders):
    eng = folders / "eng"
    if not eng.exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--max-batch", "16"])
    for runtime in ("ort", "torch"):
        assert main(["bench", str(eng), "--runtime", runtime, "--images", "2", "--repeat", "2", "--quiet"]) == 0
    ort, torch_ = (json.loads((eng / f"bench-{r}.json").read_text()) for r in ("ort", "torch"))
    assert ort["runtime"] == "ort" and torch_["runtime"] == "torch"
    assert main(["bench", str(eng), "--images", "2", "--repeat", "2", "--quiet", "--out", str(folders / "b.json")]) == 0
    assert json.loads((folders / "b.json").read_text())["runtime"] == "ort"


def test_a_speedup_beyond_the_flop_bound_is_flagged(folders, monkeypatch, capsys):
    """Timings that make the cached loop 10x faster than full compute, for a schedule whose FLOP
    bound is ~2x, cannot be the schedule's doing: bench says so instead of reporting it."""
    import harmonica_compile.runtime.bench as bench

    eng = folders / "eng"
    if not eng.exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--max-batch", "16"])
    real = bench._timed_run

    def skewed(denoise, *args):
        times = real(denoise, *args)
        return times if getattr(denoise, "full_compute", True) else [t / 10 for t in times]

    monkeypatch.setattr(bench, "_timed_run", skewed)
    result = bench.bench_engine(eng, images=2, repeat=3, model="helpers:tiny_spec", write=False)
    assert result["real_speedup"] > result["theoretical_speedup"] and result["plausible"] is False
    assert "exceeds the FLOP bound" in result["warning"] and "warm-up" in result["warning"]
    assert "warning: the measured speedup" in bench.format_bench(result)


def test_torch_bench_times_full_and_cached_through_the_same_code(folders, monkeypatch):
    """Full compute in the torch bench is the all-compute schedule's CachedModel, not the eager
    module: both sides then run captured graphs through the same step engine."""
    import harmonica_compile.runtime.bench as bench

    seen = []
    real = bench._timed_run
    monkeypatch.setattr(bench, "_timed_run", lambda denoise, *a: (seen.append(denoise.reset), real(denoise, *a))[1])
    eng = folders / "eng"
    if not eng.exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(eng), "--max-batch", "16"])
    bench.bench_engine(eng, runtime="torch", images=1, repeat=1, warmup=0, model="helpers:tiny_spec", write=False)
    owners = {type(getattr(r, "__self__", None)).__name__ for r in seen}
    assert owners == {"CachedModel"}


def test_bench_compile_reports_compile_seconds_apart(folders, capsys):
    """``bench --runtime torch --compile``: both sides compiled before the warm-up, the compile
    seconds in the result and the printout, the runtime named as compiled; other runtimes refuse."""
    eng = folders / "eng"
    if not eng.exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(eng)])
    out = folders / "bench-compiled.json"
    argv = ["bench", str(eng), "--runtime", "torch", "--compile", "--images", "1", "--repeat", "1", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["compile_seconds"]) == {"full", "cached"} and all(
        s > 0 for s in result["compile_seconds"].values()
    )
    assert "compiled (inductor)" in result["providers"][0]
    assert "compile (not timed above)" in capsys.readouterr().out
    assert main(["bench", str(eng), "--runtime", "ort", "--compile"]) == 2
    assert "has its own" in capsys.readouterr().err


def test_bench_dtype_runs_both_torch_sides_lowered(folders):
    """``bench --runtime torch --dtype bf16``: the result names the dtype; other runtimes refuse."""
    eng = folders / "eng"
    if not eng.exists():
        main(["export", str(folders / "sched"), *MODEL, "--out", str(eng)])
    out = folders / "bench-bf16.json"
    argv = ["bench", str(eng), "--runtime", "torch", "--dtype", "bf16", "--images", "1", "--repeat", "1", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["dtype"] == "bfloat16" and "bfloat16 matmuls" in result["providers"][0]
    assert main(["bench", str(eng), "--runtime", "ort", "--dtype", "bf16"]) == 2
