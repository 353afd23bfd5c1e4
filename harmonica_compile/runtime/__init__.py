"""Runtimes for exported folders: ONNX Runtime and TensorRT runners for the one sampling loop."""

from __future__ import annotations

import os
from typing import Any

from ..errors import RuntimeBackendError
from ..exporters.manifest import Manifest, load_manifest

__all__ = ["open_engine"]


def open_engine(
    folder: str | os.PathLike[str], runtime: str = "auto", *, manifest: Manifest | None = None, **options: Any
) -> Any:
    """A runner for an exported folder: ``ort`` for ONNX folders, ``trt`` for TensorRT engines.

    The manifest is read and its checksums verified once, here (or pass one already loaded).
    """
    if runtime not in ("auto", "ort", "trt"):
        raise RuntimeBackendError(f"runtime must be 'auto', 'ort' or 'trt', got {runtime!r}")
    manifest = manifest or load_manifest(folder)
    if runtime == "auto":
        runtime = "trt" if manifest.kind == "tensorrt" else "ort"
    if runtime == "ort":
        from .ort import OrtRunner

        return OrtRunner(folder, manifest, **options)
    from .tensorrt import TensorRTRunner

    options.pop("threads", None)  # CPU threads are ONNX Runtime's concern; engines run on the GPU
    return TensorRTRunner(folder, manifest, **options)
