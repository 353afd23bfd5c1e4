"""Exporters: per-step ONNX graphs with one shared weights file, the manifest, TensorRT, trtexec."""

from __future__ import annotations

from .manifest import Manifest, load_manifest
from .onnx import DEFAULT_OPSET, export_onnx
from .tensorrt import check_op_coverage, export_tensorrt
from .trtexec import trtexec_command, write_trtexec_script

__all__ = [
    "DEFAULT_OPSET",
    "Manifest",
    "check_op_coverage",
    "export_onnx",
    "export_tensorrt",
    "load_manifest",
    "trtexec_command",
    "write_trtexec_script",
]
