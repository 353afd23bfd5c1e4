"""TensorRT: op coverage of our ONNX graphs, and one engine per distinct graph.

- :func:`check_op_coverage` lists every op of an exported folder against the TensorRT ONNX
  parser's support matrix, kept as data in ``tensorrt_onnx_ops.json`` (with its source).
- :func:`export_tensorrt` exports the ONNX folder (or reuses one), then builds one serialized
  engine per graph with the ``tensorrt`` Python API: an optimization profile over the batch
  dimension (``ExportConfig.batch``: min <= opt <= max), one timing cache shared by all builds,
  TF32 off unless asked (so "fp32" means fp32), fp16 only on TensorRT 10 (11 is strongly typed),
  engines named by graph, GPU and TensorRT version (engines are not portable across either).

TensorRT cannot be installed from PyPI on machines without NVIDIA's runtime; when ``tensorrt`` is
missing, building raises :class:`~harmonica_compile.errors.RuntimeBackendError` saying so. No engine
is ever faked: a folder of kind ``tensorrt`` only exists if TensorRT built it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import time
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ExportError, RuntimeBackendError
from ..io import atomic_dir, atomic_write_bytes, sha256_file
from .config import ExportConfig
from .manifest import Manifest, StepEntry, build_manifest, load_manifest, tool_versions

__all__ = [
    "GPU_SLUG_SED",
    "check_op_coverage",
    "export_tensorrt",
    "gpu_slug",
    "require_tensorrt",
    "slugify_gpu_name",
    "supported_ops",
    "tensorrt_logger",
    "tensorrt_version",
]


def supported_ops() -> dict[str, Any]:
    """The TensorRT ONNX parser's support matrix (``supported``, ``unsupported``, ``source``)."""
    path = resources.files("harmonica_compile.exporters") / "tensorrt_onnx_ops.json"
    return json.loads(path.read_text())


def check_op_coverage(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Ops used by every graph of an ONNX folder, and which of them the TensorRT parser lacks."""
    import onnx

    manifest = load_manifest(folder)
    table = supported_ops()
    ok = set(table["supported"])
    counts: Counter[str] = Counter()
    opsets = set()
    for g in manifest.graphs:
        model = onnx.load(str(manifest.graph_path(g["id"])), load_external_data=False)
        counts.update(n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx"))
        custom = [n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")]
        if custom:
            counts.update(f"{op} (custom domain)" for op in custom)
        opsets.update(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    missing = sorted(op for op in counts if op not in ok)
    in_range = all(table["opset_min"] <= v <= table["opset_max"] for v in opsets)
    return {
        "ops": dict(sorted(counts.items())),
        "unsupported": missing,
        "opsets": sorted(opsets),
        "opset_in_range": in_range,
        "supported_by": f"TensorRT {table['tensorrt_version']} ONNX parser ({table['source']})",
        "restrictions": {op: table["restrictions"][op] for op in counts if op in table.get("restrictions", {})},
    }


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or ``None``."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(trt.__version__)


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or a RuntimeBackendError saying what is missing."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as e:
        raise RuntimeBackendError(
            "TensorRT is not installed: building engines needs the tensorrt Python package and an NVIDIA GPU "
            "(pip install 'harmonica-compile[tensorrt]' where NVIDIA's wheels are reachable). Without it, export "
            "--format onnx and build with the script write_trtexec_script() writes"
        ) from e
    return trt


@functools.cache
def tensorrt_logger() -> Any:
    """The process's one TensorRT logger (TensorRT expects a single logger per process), shared
    by every builder, parser and runtime we create."""
    trt = require_tensorrt()
    return trt.Logger(trt.Logger.WARNING)


def slugify_gpu_name(name: str) -> str:
    """A GPU name as it appears in engine file names: runs of other characters become ``_``.

    The trtexec script applies the same rule in sed (``GPU_SLUG_SED``), so engines built by
    either carry the same name.

    Example:
        >>> slugify_gpu_name("NVIDIA H200"), slugify_gpu_name("Tesla V100-SXM2-16GB")
        ('NVIDIA_H200', 'Tesla_V100_SXM2_16GB')
    """
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


#: ``sed -E`` program equal to :func:`slugify_gpu_name` (checked against it by a test).
GPU_SLUG_SED = "s/[^A-Za-z0-9]+/_/g; s/^_+//; s/_+$//"


def gpu_slug() -> str:
    """The current CUDA device's name, slugified; engines are named and checked by it."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeBackendError("TensorRT engines are built and run on a CUDA GPU, and torch sees none")
    return slugify_gpu_name(torch.cuda.get_device_name(torch.cuda.current_device()))


def _build_engine(
    trt: Any, onnx_path: Path, graph: dict[str, Any], *, config: ExportConfig, timing_cache: bytes | None
) -> tuple[bytes, bytes]:
    logger = tensorrt_logger()
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags = 0
    if not config.fp16 and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # required on 11, opt-in on 10
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    builder_config = builder.create_builder_config()
    cache = builder_config.create_timing_cache(timing_cache or b"")
    builder_config.set_timing_cache(cache, ignore_mismatch=False)
    if config.fp16:
        if major >= 11:
            raise ExportError("TensorRT 11 is strongly typed: fp16 must come from the ONNX (ModelOpt AutoCast)")
        builder_config.set_flag(trt.BuilderFlag.FP16)
    # TensorRT allows TF32 for fp32 layers by default (10-bit mantissa products, ~1e-4 relative
    # error): an engine called fp32 must not use it unless the user asked.
    if not config.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        builder_config.clear_flag(trt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    batch = config.batch
    for entry in graph["inputs"]:
        if "batch" not in entry["shape"]:
            continue
        shapes = [tuple(batch[k] if d == "batch" else int(d) for d in entry["shape"]) for k in ("min", "opt", "max")]
        profile.set_shape(entry["name"], *shapes)
    builder_config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, builder_config)
    if engine is None:
        raise ExportError(f"TensorRT failed to build an engine for {onnx_path.name} (see the log above)")
    return bytes(engine), bytes(builder_config.get_timing_cache().serialize())


#: What a TensorRT folder keeps from the ONNX export it was built from.
_ONNX_FACTS = ("opset", "exporter", "weights", "example_inputs", "timing")


def export_tensorrt(
    cached: Any,
    out: str | os.PathLike[str],
    *,
    model_name: str,
    sampler: Any,
    spec: Any = None,
    config: ExportConfig | None = None,
    onnx_dir: str | os.PathLike[str] | None = None,
    check: Any = None,
    **overrides: Any,
) -> Manifest:
    """Build one TensorRT engine per graph into ``out`` (atomically); ONNX files are kept next to them.

    ``config`` (or keyword ``overrides`` of its fields: ``max_batch=``, ``opt_batch=``, ``fp16=``,
    ...) sets the optimization profile and precision; with ``onnx_dir`` and no batch given, the
    ONNX folder's batch profile is used. ``check`` is the parity gate handed to the ONNX export
    when one is made here.
    """
    trt = require_tensorrt()
    gpu = gpu_slug()
    version = str(trt.__version__)
    from .onnx import export_onnx

    with atomic_dir(out) as tmp:
        if onnx_dir is None:
            config = (config or ExportConfig()).replace(**overrides)
            onnx_folder = tmp / "onnx"
            export_onnx(
                cached, onnx_folder, model_name=model_name, sampler=sampler, spec=spec, config=config, check=check
            )
        else:
            onnx_folder = Path(onnx_dir)
            if config is None:
                batch = load_manifest(onnx_folder).data.get("batch", {})
                config = ExportConfig(
                    min_batch=int(batch.get("min", 1)),
                    max_batch=int(batch.get("max", ExportConfig().max_batch)),
                    opt_batch=int(batch["opt"]) if "opt" in batch else None,
                )
            config = config.replace(**overrides)
        source = load_manifest(onnx_folder)
        coverage = check_op_coverage(onnx_folder)
        if coverage["unsupported"]:
            raise ExportError(f"the graphs use ops TensorRT's parser lacks: {coverage['unsupported']}")
        for item in onnx_folder.iterdir():  # engines and their ONNX side by side
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        if onnx_dir is None:
            shutil.rmtree(onnx_folder)
        graphs = []
        timing: bytes | None = None
        started = time.perf_counter()
        for g in source.graph_entries():
            t0 = time.perf_counter()
            engine, timing = _build_engine(trt, tmp / g.file, g.to_json(), config=config, timing_cache=timing)
            name = f"{Path(g.file).stem}.{gpu}.trt{version}.plan"
            atomic_write_bytes(tmp / name, engine)
            graphs.append(
                dataclasses.replace(
                    g,
                    file=name,
                    sha256=sha256_file(tmp / name),
                    onnx_file=g.file,
                    onnx_sha256=g.sha256,
                    engine_bytes=len(engine),
                    build_seconds=round(time.perf_counter() - t0, 3),
                )
            )
        if timing:
            atomic_write_bytes(tmp / f"timing.{gpu}.trt{version}.cache", timing)
        onnx_facts = {k: source.data[k] for k in _ONNX_FACTS if k in source.data}
        data = build_manifest(
            kind="tensorrt",
            model=source.data["model"],
            sampler=source.data["sampler"],
            schedule=source.data["schedule"],
            steps=[StepEntry.from_json(s) for s in source.steps],
            graphs=graphs,
            files={**source.data.get("files", {}), **{g.onnx_file: g.onnx_sha256 for g in graphs}},
            tools=tool_versions({"tensorrt": version}),
            **onnx_facts,
            onnx_parity=source.data.get("parity"),
            gpu=gpu,
            batch=config.batch,
            precision=config.precision,
            export_config=config.to_json(),
            op_coverage=coverage,
            engine_bytes_total=sum(int(g.engine_bytes or 0) for g in graphs),
            build_seconds=round(time.perf_counter() - started, 3),
        )
        Manifest(tmp, data).write()
    return load_manifest(out)
