"""``trtexec`` command lines and scripts for every graph of an exported ONNX folder.

The flags differ by TensorRT major version (TensorRT docs, "Migrating trtexec Usage from TensorRT
10.x to 11.x"):

- 10.x: ``--fp16`` selects reduced precision (weak typing); ``--useCudaGraph`` and
  ``--separateProfileRun`` must be spelled out for representative timings.
- 11.x: every network is strongly typed, all precision flags (``--fp16``, ``--int8``, ``--best``,
  ...) are removed, and ``--stronglyTyped`` is always on; reduced precision must live in the ONNX.

Shapes come from the manifest: every input whose first dimension is ``batch`` gets a
min/opt/max profile, the others are static.

Example:
    >>> cmd = trtexec_command("g.onnx", "g.plan", [{"name": "x", "shape": ["batch", 1, 16, 16]}],
    ...                       trt_major=10, min_batch=1, opt_batch=2, max_batch=8, fp16=True)
    >>> " ".join(cmd)  # doctest: +NORMALIZE_WHITESPACE
    'trtexec --onnx=g.onnx --saveEngine=g.plan --minShapes=x:1x1x16x16 --optShapes=x:2x1x16x16
     --maxShapes=x:8x1x16x16 --builderOptimizationLevel=3 --dumpProfile --exportTimes=g.plan.times.json
     --fp16 --useCudaGraph --separateProfileRun'
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..io import atomic_write_text

__all__ = ["SUPPORTED_MAJORS", "trtexec_command", "write_trtexec_script"]

SUPPORTED_MAJORS = (10, 11)


def _shape(entry: Mapping[str, Any], batch: int) -> str:
    dims = [str(batch) if d == "batch" else str(d) for d in entry["shape"]]
    return f"{entry['name']}:" + "x".join(dims)


def trtexec_command(
    onnx_file: str,
    engine_file: str,
    inputs: Sequence[Mapping[str, Any]],
    *,
    trt_major: int,
    min_batch: int = 1,
    opt_batch: int = 2,
    max_batch: int = 64,
    fp16: bool = False,
    timing_cache: str | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``trtexec`` argv that builds (and times) one engine; see the module docstring."""
    if trt_major not in SUPPORTED_MAJORS:
        raise ConfigError(f"TensorRT major version must be one of {SUPPORTED_MAJORS}, got {trt_major}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    if fp16 and trt_major >= 11:
        raise ConfigError(
            "TensorRT 11 is strongly typed and has no --fp16: convert the ONNX to mixed precision first "
            "(python -m modelopt.onnx.autocast --onnx_path model.onnx) and build without a precision flag"
        )
    for entry in inputs:
        if any(d == "?" for d in entry["shape"]):
            raise ConfigError(f"input {entry['name']!r} has an unknown dimension {entry['shape']}; export again")
    dynamic = [e for e in inputs if "batch" in e["shape"]]
    cmd = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file}"]
    if dynamic:
        for flag, batch in (("--minShapes", min_batch), ("--optShapes", opt_batch), ("--maxShapes", max_batch)):
            cmd.append(f"{flag}=" + ",".join(_shape(e, batch) for e in dynamic))
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd += ["--builderOptimizationLevel=3", "--dumpProfile", f"--exportTimes={engine_file}.times.json"]
    if trt_major == 10:
        if fp16:
            cmd.append("--fp16")
        cmd += ["--useCudaGraph", "--separateProfileRun"]
    cmd += list(extra)
    return cmd


def write_trtexec_script(
    folder: str | os.PathLike[str],
    *,
    trt_major: int,
    fp16: bool = False,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    engine_suffix: str | None = None,
) -> Path:
    """Write ``folder/trtexec_build.sh``: one trtexec call per graph, sharing one timing cache."""
    from .manifest import load_manifest

    manifest = load_manifest(folder)
    batch = manifest.data.get("batch", {})
    lo = int(batch.get("min", 1))
    opt = int(opt_batch or batch.get("opt", 2))
    hi = int(max_batch or batch.get("max", 64))
    suffix = engine_suffix or f"trt{trt_major}"
    lines = [
        "#!/usr/bin/env bash",
        f"# Build and time one TensorRT {trt_major}.x engine per graph of {manifest.model_name}'s "
        f"{manifest.num_steps}-step schedule.",
        "# Engines are specific to the GPU model and TensorRT version: keep both in the file name.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | tr " " "_")',
    ]
    for g in manifest.graphs:
        engine = f"{Path(g['file']).stem}.$GPU.{suffix}.plan"
        cmd = trtexec_command(
            g["file"],
            engine,
            g["inputs"],
            trt_major=trt_major,
            min_batch=lo,
            opt_batch=opt,
            max_batch=hi,
            fp16=fp16,
            timing_cache=f"timing.$GPU.{suffix}.cache",
        )
        lines.append(" ".join(part if "$GPU" in part else shlex.quote(part) for part in cmd))
    path = Path(folder) / f"trtexec_build_trt{trt_major}.sh"
    atomic_write_text(path, "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path
