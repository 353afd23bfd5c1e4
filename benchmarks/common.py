"""Shared helpers of the benchmark scripts: timing, environment facts, result files.

Benchmarks measure; they never assert. Each script writes ``benchmarks/results/<name>.json`` (and
usually ``.md``) with the numbers of one run, plus the machine it ran on.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    import numpy
    import onnx
    import onnxruntime

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": numpy.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def wall_ms(fn: Callable[[], Any]) -> float:
    """Wall-clock milliseconds of one call."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    warmup: int = 3,
    repeat: int = 20,
    timer: Callable[[Callable[[], Any]], float] = wall_ms,
) -> dict[str, dict[str, float]]:
    """Median, min and mean milliseconds of each function, measured round-robin so that drift in
    machine load affects every function alike; ``timer`` measures one call (default wall clock;
    the GPU check passes CUDA events)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            samples[name].append(timer(fn))
    return {
        k: {"median_ms": statistics.median(v), "min_ms": min(v), "mean_ms": statistics.fmean(v), "repeat": len(v)}
        for k, v in samples.items()
    }


def write_result(name: str, data: dict[str, Any], markdown: str | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**data, "environment": environment()}, indent=2) + "\n")
    if markdown is not None:
        (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    return path
