"""The GPU check script: its CPU dry run (the same code as on a GPU, small models) and its failure
handling, so that the one script a GPU machine runs cannot rot between GPU sessions."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
ENV = {**os.environ, "PYTHON": sys.executable}  # the wrapper runs this interpreter, not whatever python3 is


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_runs_every_part_or_says_why_not(tmp_path):
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path)], capture_output=True, text=True, timeout=900, env=ENV
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "cpu-dry-run.json").read_text())
    assert (tmp_path / "cpu-dry-run.md").read_text().startswith("# GPU check")
    parts = report["parts"]
    assert parts["torch"].startswith("ran") and parts["ort"].startswith("ran")
    assert parts["tensorrt"].startswith("skipped: TensorRT needs a CUDA GPU")
    assert parts["trtexec"].startswith("skipped: ")
    rows = report["results"]["torch"]
    cases = {(r["model"], r["dtype"], r["precision"], r["schedule"]) for r in rows}
    assert cases == {("tiny-dit-digits", dtype, "model", "fora2") for dtype in ("float32", "bfloat16")} | {
        ("DiT-S/8@16", dtype, how, s)
        for dtype, how in (("float32", "model"), ("bfloat16", "model"), ("bfloat16", "mixed"))
        for s in ("cur0.375", "fora2")
    }
    assert all(r["parity_ok"] for r in rows if r["precision"] == "model")
    assert all(r["parity_ok"] is None for r in rows if r["precision"] == "mixed"), "mixed is reported, not judged"
    fp32 = [r["vs_fp32_eager_max_abs"] for r in rows if r["dtype"] == "float32" and not r["compiled"]]
    assert max(fp32) <= max(r["parity_bound"] for r in rows if r["parity_bound"] is not None)
    assert {r["cur"] for r in rows} == {0.375, 0.5}
    assert all(r["theoretical_speedup"] > 1 and r["measured_speedup"] > 0 for r in rows)
    (ort,) = report["results"]["ort"]
    assert ort["providers"] == ["CPUExecutionProvider"]


def test_a_failing_command_is_an_error_not_a_later_crash(gpu_check, tmp_path):
    with pytest.raises(RuntimeError, match="exited with code 2"):
        gpu_check.run_cli(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "eng")])


def test_a_failing_part_fails_the_check_and_the_others_still_run(gpu_check, tmp_path, monkeypatch):
    def broken(*args):
        raise RuntimeError("export went wrong")

    monkeypatch.setattr(gpu_check, "part_ort", broken)
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--parts", "ort,tensorrt"])
    report = json.loads((tmp_path / "cpu-dry-run.json").read_text())
    assert code == 1
    assert report["parts"]["ort"] == "FAILED: RuntimeError: export went wrong"
    assert report["parts"]["tensorrt"].startswith("skipped")


def test_bad_arguments_exit_nonzero_through_the_wrapper(tmp_path):
    done = subprocess.run(
        ["bash", str(SCRIPT), "--parts", "bogus"], capture_output=True, text=True, timeout=120, env=ENV
    )
    assert done.returncode == 2 and "unknown parts ['bogus']" in done.stderr
    if not _has_cuda():
        cmd = ["bash", str(SCRIPT), "--device", "cuda"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
        assert done.returncode == 2 and "torch sees no CUDA device" in done.stderr


def _has_cuda() -> bool:
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code]).returncode == 0
