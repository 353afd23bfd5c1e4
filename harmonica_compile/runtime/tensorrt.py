"""TensorRT runner: one execution context per engine, CUDA tensors carried between steps.

Inputs, caches and outputs live on the GPU as torch tensors whose addresses are bound to the
contexts (``set_tensor_address`` + ``execute_async_v3`` on one stream). Engines only run on the GPU
model and TensorRT version that built them; the manifest records both and a mismatch is an error.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..errors import RuntimeBackendError
from ..exporters.manifest import Manifest
from .base import EngineRunner

__all__ = ["TensorRTRunner"]


class TensorRTRunner(EngineRunner):
    def __init__(self, folder: str | os.PathLike[str], manifest: Manifest | None = None, *, full_compute: bool = False):
        super().__init__(folder, manifest, full_compute=full_compute)
        if self.manifest.kind != "tensorrt":
            raise RuntimeBackendError(
                f"{folder} holds {self.manifest.kind} graphs, not TensorRT engines; use runtime 'ort'"
            )
        from ..exporters.tensorrt import _gpu_slug, _require_tensorrt

        self.trt = _require_tensorrt()
        built_with = self.manifest.data["tools"].get("tensorrt")
        if built_with != self.trt.__version__:
            raise RuntimeBackendError(
                f"{folder} was built with TensorRT {built_with}, this is {self.trt.__version__}; engines are not "
                "portable across TensorRT versions: build them again"
            )
        gpu = _gpu_slug()
        if gpu != self.manifest.data.get("gpu"):
            raise RuntimeBackendError(
                f"{folder} was built on {self.manifest.data.get('gpu')}, this GPU is {gpu}; engines are not portable "
                "across GPU models: build them again"
            )
        self.providers = [f"TensorRT {self.trt.__version__}"]
        self._runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        self._engines: dict[int, Any] = {}
        self._contexts: dict[int, Any] = {}
        self._stream = torch.cuda.Stream()

    def _context(self, graph_id: int) -> Any:
        if graph_id not in self._contexts:
            engine = self._runtime.deserialize_cuda_engine(self.manifest.graph_path(graph_id).read_bytes())
            if engine is None:
                raise RuntimeBackendError(f"TensorRT cannot load {self.manifest.graph_path(graph_id)}")
            self._engines[graph_id] = engine
            self._contexts[graph_id] = engine.create_execution_context()
        return self._contexts[graph_id]

    def _run(self, graph_id: int, feeds: dict[str, Any]) -> list[Any]:
        ctx = self._context(graph_id)
        engine = self._engines[graph_id]
        keep = []
        for name, value in feeds.items():
            tensor = torch.as_tensor(value).cuda().contiguous()
            want = torch.from_numpy(np.empty(0, dtype=self.trt.nptype(engine.get_tensor_dtype(name)))).dtype
            tensor = tensor.to(want)
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
            keep.append(tensor)
        outputs = []
        for entry in self._graphs[graph_id]["outputs"]:
            name = entry["name"]
            dtype = torch.from_numpy(np.empty(0, dtype=self.trt.nptype(engine.get_tensor_dtype(name)))).dtype
            out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype, device="cuda")
            ctx.set_tensor_address(name, out.data_ptr())
            outputs.append(out)
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeBackendError(f"TensorRT failed to run graph {graph_id}")
        self._stream.synchronize()
        return outputs

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return super().__call__(x, t, cond).to(x.device)

    def _to_torch(self, value: Any) -> torch.Tensor:
        return value
