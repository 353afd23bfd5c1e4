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
    result = json.loads((eng / "bench.json").read_text())
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
