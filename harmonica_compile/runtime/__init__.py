"""Runtimes for exported folders: ONNX Runtime and TensorRT runners for the one sampling loop."""

from __future__ import annotations

import os
from typing import Any

from ..errors import RuntimeBackendError
from ..exporters.manifest import load_manifest

__all__ = ["open_engine"]


def open_engine(folder: str | os.PathLike[str], runtime: str = "auto", **options: Any) -> Any:
    """A runner for an exported folder: ``ort`` for ONNX folders, ``trt`` for TensorRT engines."""
    manifest = load_manifest(folder)
    kind = manifest.kind
    if runtime == "auto":
        runtime = "trt" if kind == "tensorrt" else "ort"
    if runtime == "ort":
        from .ort import OrtRunner

        return OrtRunner(folder, **options)
    if runtime == "trt":
        from .tensorrt import TensorRTRunner

        return TensorRTRunner(folder, **options)
    raise RuntimeBackendError(f"runtime must be 'auto', 'ort' or 'trt', got {runtime!r}")
