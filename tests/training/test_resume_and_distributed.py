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
from helpers import U32, tiny_roundings, tiny_spec

from harmonica_compile.errors import TrainingError
from harmonica_compile.io import load_safetensors
from harmonica_compile.schedule import CacheSchedule
from harmonica_compile.training import TrainConfig, train_schedule

TESTS = Path(__file__).resolve().parent.parent
CONFIG = TrainConfig(num_steps=5, target_cur=0.4, iterations=6, batch_size=2, lambda_every=2, checkpoint_every=2)


def test_resume_in_process_gives_the_same_schedule(tmp_path):
    """Exact: the checkpoint holds the logits, lambda and optimizer moments bit for bit
    (safetensors) and the controller's floats as exact JSON, noise and labels are drawn from
    (seed, iteration), so the resumed iterations run the same ops on the same inputs in this
    process as the uninterrupted ones."""
    spec = tiny_spec()
    full = train_schedule(spec, config=CONFIG, progress=False)
    ckpt = tmp_path / "ckpt.safetensors"
    train_schedule(spec, config=CONFIG, checkpoint=ckpt, stop_after=4, progress=False)
    resumed = train_schedule(spec, config=CONFIG, checkpoint=ckpt, resume=True, progress=False)
    assert resumed.resumed_from == 4
    assert resumed.schedule == full.schedule
    assert torch.equal(resumed.logits, full.logits)
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
    # exact, as in test_resume_in_process_gives_the_same_schedule: the same program with the same
    # thread count (--threads 1) on the same machine restarts from a bit-exact checkpoint
    assert torch.equal(_logits(run), _logits(ref))
    report = json.loads((run / "report.json").read_text())
    assert report["resumed_from"] is None or 1 <= report["resumed_from"] <= 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adam_ratio_bound(updates: int, beta1: float = 0.9, beta2: float = 0.999) -> float:
    """A bound on Adam's ``|m_hat| / sqrt(v_hat)`` over the first ``updates`` steps: with the
    bias-corrected moving-average weights ``a_k`` (of g) and ``b_k`` (of g**2), each summing to 1,
    Cauchy-Schwarz gives ``|sum a_k g_k| <= sqrt(sum a_k**2 / b_k) * sqrt(sum b_k g_k**2)``."""
    best = 0.0
    for t in range(1, updates + 1):
        a = [(1 - beta1) * beta1 ** (t - k) / (1 - beta1**t) for k in range(1, t + 1)]
        b = [(1 - beta2) * beta2 ** (t - k) / (1 - beta2**t) for k in range(1, t + 1)]
        best = max(best, sum(x * x / y for x, y in zip(a, b, strict=True)) ** 0.5)
    return best


def _two_process_logit_atol(steps: int, iterations: int, lr: float) -> float:
    """How far float32 reassociation can move the logits of 2 processes from those of 1.

    The runs differ in how sums split over processes (all-reduce) and batch elements. One router
    row's gradient ends a chain of at most ``2 * steps + 1`` forwards of tiny_spec (6139 roundings
    each, helpers.dit_roundings: the trajectory to the step, the student, its backward, lambda's
    x0 under ``steps`` more) plus the sums over the MSE's 2*2*8*8 = 256, lambda's 8*2*8*8 = 1024 and
    the gate gradient's 4*4*64 = 1024 elements: the two gradients differ by a relative
    ``rho = 2 * N * u`` at most (helpers.fp32_atol). Adam's step ``lr * m_hat / sqrt(v_hat)`` is then
    off by at most ``lr * 2 * B * rho`` (:func:`_adam_ratio_bound`, B = 1.043 for 10 steps), and a
    logit difference d changes the sigmoid slope in the gradient by a relative d at most, so
    ``d_{n+1} <= d_n + 2 B lr (rho + d_n)``: after n updates ``d <= rho ((1 + 2 B lr)**n - 1)``."""
    chain = (2 * steps + 1) * tiny_roundings("tiny-spec") + 256 + 1024 + 1024
    rho = 2 * chain * U32
    growth = 1 + 2 * _adam_ratio_bound(iterations) * lr
    return rho * (growth**iterations - 1)


@pytest.mark.slow
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path):
    """Logits within :func:`_two_process_logit_atol` (0.014 for 5 steps, 10 iterations, lr 0.05:
    each row takes one AdamW step per iteration)."""
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
    atol = _two_process_logit_atol(steps=5, iterations=10, lr=TrainConfig().lr)
    assert (_logits(two) - _logits(one)).abs().max() <= atol
    assert CacheSchedule.load(two / "schedule.json") == CacheSchedule.load(one / "schedule.json")
