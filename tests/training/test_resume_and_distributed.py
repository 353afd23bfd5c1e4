"""Checkpoints: resume equals an uninterrupted run, also after SIGKILL; torchrun with 2 processes
equals 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_spec

from harmonica_compile.errors import TrainingError
from harmonica_compile.io import load_safetensors
from harmonica_compile.schedule import CacheSchedule
from harmonica_compile.training import TrainConfig, train_schedule

TESTS = Path(__file__).resolve().parent.parent
CONFIG = TrainConfig(num_steps=5, target_cur=0.4, iterations=6, batch_size=2, lambda_every=2, checkpoint_every=2)


def test_resume_in_process_gives_the_same_schedule(tmp_path):
    spec = tiny_spec()
    full = train_schedule(spec, config=CONFIG, progress=False)
    ckpt = tmp_path / "ckpt.safetensors"
    train_schedule(spec, config=CONFIG, checkpoint=ckpt, stop_after=4, progress=False)
    resumed = train_schedule(spec, config=CONFIG, checkpoint=ckpt, resume=True, progress=False)
    assert resumed.resumed_from == 4
    assert resumed.schedule == full.schedule
    torch.testing.assert_close(resumed.logits, full.logits, rtol=0, atol=1e-6)
    assert [h["iteration"] for h in resumed.history] == list(range(6))


def test_resume_refuses_a_damaged_or_foreign_checkpoint(tmp_path):
    spec = tiny_spec()
    ckpt = tmp_path / "ckpt.safetensors"
    train_schedule(spec, config=CONFIG, checkpoint=ckpt, stop_after=2, progress=False)
    with pytest.raises(TrainingError, match="other settings .*target_cur"):
        train_schedule(spec, config=CONFIG.replace(target_cur=0.3), checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(TrainingError, match="another model or sampler"):
        train_schedule(tiny_spec(depth=1), config=CONFIG, checkpoint=ckpt, resume=True, progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(TrainingError, match="damaged"):
        train_schedule(spec, config=CONFIG, checkpoint=ckpt, resume=True, progress=False)
    with pytest.raises(TrainingError, match="no checkpoint"):
        train_schedule(spec, config=CONFIG, checkpoint=tmp_path / "none.safetensors", resume=True, progress=False)


def _env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def _optimize_cmd(out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harmonica_compile",
        "optimize",
        "--model",
        "helpers:tiny_spec",
        "--steps",
        "5",
        "--target-cur",
        "0.4",
        "--iterations",
        "10",
        "--batch-size",
        "2",
        "--lambda-every",
        "3",
        "--checkpoint-every",
        "1",
        "--no-eval",
        "--threads",
        "1",
        "--quiet",
        "--out",
        str(out),
        *extra,
    ]


def _logits(folder: Path) -> torch.Tensor:
    return load_safetensors(folder / "routers.safetensors")[0]["logits"]


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume(tmp_path):
    ref = tmp_path / "ref"
    subprocess.run(_optimize_cmd(ref), check=True, env=_env(), timeout=600)
    run = tmp_path / "run"
    proc = subprocess.Popen(_optimize_cmd(run), env=_env())
    ckpt = run / "checkpoint.safetensors"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 1.0))  # somewhere in the middle of training (or of a checkpoint write)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Whether the kill landed in training, in a checkpoint write or after the schedule was written,
    # resuming must end with the uninterrupted run's schedule.
    result = subprocess.run(_optimize_cmd(run, "--resume"), env=_env(), timeout=600, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert CacheSchedule.load(run / "schedule.json") == CacheSchedule.load(ref / "schedule.json")
    torch.testing.assert_close(_logits(run), _logits(ref), rtol=0, atol=1e-6)
    report = json.loads((run / "report.json").read_text())
    assert report["resumed_from"] is None or 1 <= report["resumed_from"] <= 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    one = tmp_path / "one"
    subprocess.run(_optimize_cmd(one), check=True, env=_env(), timeout=600)
    two = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "harmonica_compile",
        *_optimize_cmd(two)[3:],
    ]
    result = subprocess.run(cmd, env=_env(), timeout=900, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((two / "report.json").read_text())
    assert report["processes"] == 2
    torch.testing.assert_close(_logits(two), _logits(one), rtol=1e-4, atol=1e-4)
    assert CacheSchedule.load(two / "schedule.json") == CacheSchedule.load(one / "schedule.json")
