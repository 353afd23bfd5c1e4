"""``trtexec`` command lines, valid input files and build scripts for an exported ONNX folder.

The flags differ by TensorRT major version (TensorRT docs, "Migrating trtexec Usage from TensorRT
10.x to 11.x"):

- 10.x: ``--fp16`` selects reduced precision (weak typing); ``--useCudaGraph`` and
  ``--separateProfileRun`` must be spelled out for representative timings.
- 11.x: every network is strongly typed, all precision flags (``--fp16``, ``--int8``, ``--best``,
  ...) are removed, and ``--stronglyTyped`` is always on; reduced precision must live in the ONNX.
- both: fp32 layers may use TF32 unless ``--noTF32`` is given; we give it unless ``tf32=True``,
  so an engine built as fp32 computes in fp32.

Shapes come from the manifest: every input whose first dimension is ``batch`` gets a
min/opt/max profile, the others are static. trtexec fills inputs it is not given with random
values, which for an int64 class label means out-of-range embedding lookups; the script passes
every graph real inputs with ``--loadInputs`` instead (:func:`write_trtexec_inputs`): the
export's example model inputs tiled to the batch, the timestep of the graph's first step, and
normal-distributed cache values.

Example:
    >>> cmd = trtexec_command("g.onnx", "g.plan", [{"name": "x", "shape": ["batch", 1, 16, 16]}],
    ...                       trt_major=10, min_batch=1, opt_batch=2, max_batch=8, fp16=True)
    >>> " ".join(cmd)  # doctest: +NORMALIZE_WHITESPACE
    'trtexec --onnx=g.onnx --saveEngine=g.plan --minShapes=x:1x1x16x16 --optShapes=x:2x1x16x16
     --maxShapes=x:8x1x16x16 --builderOptimizationLevel=3 --dumpProfile --exportTimes=g.plan.times.json
     --noTF32 --fp16 --useCudaGraph --separateProfileRun'
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, ConfigError
from ..io import atomic_write_bytes, atomic_write_text, load_safetensors
from .config import DEFAULT_MAX_BATCH, ExportConfig
from .manifest import load_manifest
from .tensorrt import GPU_SLUG_SED

__all__ = ["SUPPORTED_MAJORS", "trtexec_command", "write_trtexec_inputs", "write_trtexec_script"]

SUPPORTED_MAJORS = (10, 11)
INPUTS_DIR = "trtexec_inputs"
_NUMPY_DTYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "float64": np.float64,
    "int64": np.int64,
    "int32": np.int32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
}


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
    opt_batch: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    fp16: bool = False,
    tf32: bool = False,
    timing_cache: str | None = None,
    load_inputs: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """The ``trtexec`` argv that builds (and times) one engine; see the module docstring.

    ``load_inputs`` maps input names to raw files at ``opt_batch`` (then the timing run uses those
    values and shapes instead of random ones).
    """
    if trt_major not in SUPPORTED_MAJORS:
        raise ConfigError(f"TensorRT major version must be one of {SUPPORTED_MAJORS}, got {trt_major}")
    config = ExportConfig(min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, fp16=fp16, tf32=tf32)
    if fp16 and trt_major >= 11:
        raise ConfigError(
            "TensorRT 11 is strongly typed and has no --fp16: convert the ONNX to mixed precision first "
            "(python -m modelopt.onnx.autocast --onnx_path model.onnx) and build without a precision flag"
        )
    for entry in inputs:
        if any(d == "?" for d in entry["shape"]):
            raise ConfigError(f"input {entry['name']!r} has an unknown dimension {entry['shape']}; export again")
    batch = config.batch
    dynamic = [e for e in inputs if "batch" in e["shape"]]
    cmd = ["trtexec", f"--onnx={onnx_file}", f"--saveEngine={engine_file}"]
    if dynamic:
        for flag, key in (("--minShapes", "min"), ("--optShapes", "opt"), ("--maxShapes", "max")):
            cmd.append(f"{flag}=" + ",".join(_shape(e, batch[key]) for e in dynamic))
    if load_inputs:
        missing = [e["name"] for e in inputs if e["name"] not in load_inputs]
        if missing:
            raise ConfigError(f"load_inputs has no file for inputs {missing}")
        if dynamic:
            cmd.append("--shapes=" + ",".join(_shape(e, batch["opt"]) for e in dynamic))
        odd = [e["name"] for e in inputs if any(c in e["name"] for c in ",:'")]
        if odd:
            raise ConfigError(f"inputs {odd} have names trtexec's --loadInputs cannot carry (',', ':' or quotes)")
        cmd.append("--loadInputs=" + ",".join(f"{e['name']}:{load_inputs[e['name']]}" for e in inputs))
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd += ["--builderOptimizationLevel=3", "--dumpProfile", f"--exportTimes={engine_file}.times.json"]
    if not tf32:
        cmd.append("--noTF32")
    if trt_major == 10:
        if fp16:
            cmd.append("--fp16")
        cmd += ["--useCudaGraph", "--separateProfileRun"]
    cmd += list(extra)
    return cmd


def write_trtexec_inputs(
    folder: str | os.PathLike[str], batch: int, *, seed: int = 0, manifest: Any = None
) -> dict[int, dict[str, Path]]:
    """Write raw input files for every graph of an ONNX folder at model batch ``batch``.

    Returns ``{graph id: {input name: path}}``; files go to ``folder/trtexec_inputs/b<batch>/``.
    Model inputs are the export's example inputs tiled along the batch (valid labels, masks and
    embeddings by construction), the timestep and forecast weights are those of the graph's first
    step, and caches are standard normal (their values do not change which kernels run).
    """
    manifest = manifest or load_manifest(folder)
    folder = Path(folder)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"batch must be an integer >= 1, got {batch!r}")
    name = manifest.data.get("example_inputs")
    if not name:
        raise ArtifactError(f"{folder} has no example inputs (exported by an older harmonica-compile); export it again")
    examples, _ = load_safetensors(folder / name, what="example inputs")
    first_step: dict[int, Any] = {}
    for step in manifest.steps:
        first_step.setdefault(int(step["graph"]), step)
    gen = np.random.default_rng(seed)
    out: dict[int, dict[str, Path]] = {}
    target = folder / INPUTS_DIR / f"b{batch}"
    for g in manifest.graphs:
        files: dict[str, Path] = {}
        for entry in g["inputs"]:
            dtype = _NUMPY_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise ConfigError(
                    f"graph {g['id']}: input '{entry['name']}' has dtype {entry['dtype']} trtexec files do not support"
                )
            shape = [batch if d == "batch" else int(d) for d in entry["shape"]]
            step = first_step.get(g["id"], {})
            if entry["role"] == "timestep":
                array = np.full(shape, float(step.get("timestep", 0.0))).astype(dtype)
            elif entry["role"] == "forecast_weights":  # the weights of the graph's first step
                array = np.asarray(step["forecast_weights"], dtype=dtype).reshape(shape)
            elif entry["role"] == "cache_in":
                array = gen.standard_normal(shape).astype(dtype)
            elif entry["name"] in examples:
                array = _tile(examples[entry["name"]].numpy(), shape, entry["name"]).astype(dtype)
            else:
                raise ArtifactError(
                    f"{folder}: graph {g['id']} input '{entry['name']}' has no example value; export again"
                )
            path = target / f"graph_{g['id']:03d}.{entry['name']}.bin"
            atomic_write_bytes(path, np.ascontiguousarray(array).tobytes())
            files[entry["name"]] = path
        out[g["id"]] = files
    return out


def _tile(example: np.ndarray, shape: Sequence[int], name: str) -> np.ndarray:
    if list(example.shape[1:]) != list(shape[1:]):
        raise ArtifactError(f"example input '{name}' has shape {list(example.shape)}, the graph takes {list(shape)}")
    reps = -(-shape[0] // example.shape[0])
    return np.concatenate([example] * reps)[: shape[0]]


def write_trtexec_script(
    folder: str | os.PathLike[str],
    *,
    trt_major: int,
    fp16: bool = False,
    tf32: bool = False,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    engine_suffix: str | None = None,
) -> Path:
    """Write ``folder/trtexec_build_trt<major>.sh``: one trtexec call per graph, sharing one timing
    cache, each timed on valid inputs at the opt batch (written beside it)."""
    manifest = load_manifest(folder)
    batch = manifest.data.get("batch", {})
    lo = int(batch.get("min", 1))
    hi = int(max_batch or batch.get("max", DEFAULT_MAX_BATCH))
    opt = int(opt_batch or min(int(batch.get("opt", hi)), hi))
    config = ExportConfig(min_batch=lo, opt_batch=opt, max_batch=hi, fp16=fp16, tf32=tf32)
    files = write_trtexec_inputs(folder, config.batch["opt"], manifest=manifest)
    suffix = engine_suffix or f"trt{trt_major}"
    lines = [
        "#!/usr/bin/env bash",
        f"# Build and time one TensorRT {trt_major}.x engine per graph of {manifest.model_name}'s "
        f"{manifest.num_steps}-step schedule ({config.precision}).",
        "# Engines are specific to the GPU model and TensorRT version: both are in the file name. The GPU",
        "# name is slugified as harmonica-compile does (GPU_SLUG_SED); set GPU=... to override it, e.g.",
        "# when CUDA_DEVICE_ORDER makes CUDA's device 0 another GPU than nvidia-smi's.",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        "DEV=${CUDA_VISIBLE_DEVICES:-0}",
        'GPU=${GPU:-$(nvidia-smi --query-gpu=name --format=csv,noheader --id="${DEV%%,*}" | head -n1 | '
        f"sed -E '{GPU_SLUG_SED}')}}",
    ]
    root = Path(folder)
    for g in manifest.graphs:
        engine = f"{Path(g['file']).stem}.$GPU.{suffix}.plan"
        cmd = trtexec_command(
            g["file"],
            engine,
            g["inputs"],
            trt_major=trt_major,
            min_batch=lo,
            opt_batch=config.batch["opt"],
            max_batch=hi,
            fp16=fp16,
            tf32=tf32,
            timing_cache=f"timing.$GPU.{suffix}.cache",
            load_inputs={n: str(p.relative_to(root)) for n, p in files[g["id"]].items()},
        )
        lines.append(" ".join(part if "$GPU" in part else shlex.quote(part) for part in cmd))
    path = root / f"trtexec_build_trt{trt_major}.sh"
    atomic_write_text(path, "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path
