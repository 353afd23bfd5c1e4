"""TensorRT runner: one execution context per engine, CUDA tensors carried between steps.

Inputs, caches and outputs live on the GPU as torch tensors whose addresses are bound to the
contexts (``set_tensor_address`` + ``execute_async_v3``). The engines run on a stream of their own
(TensorRT warns against the legacy default stream), ordered against torch's current stream with
events in both directions: the step waits for the work that produced its inputs, and whatever
torch does next with the outputs waits for the step, without a host synchronization per step.
Engines only run on the GPU model and TensorRT version that built them; the manifest records both
and a mismatch is an error.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import RuntimeBackendError
from ..exporters.manifest import Manifest
from ..exporters.tensorrt import gpu_slug, require_tensorrt, tensorrt_logger
from .base import EngineRunner

__all__ = ["TensorRTRunner", "torch_dtype_of"]

_TORCH_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def torch_dtype_of(trt_dtype: Any) -> torch.dtype:
    """The torch dtype of a ``tensorrt.DataType`` (by name, so no numpy round trip is needed)."""
    name = getattr(trt_dtype, "name", str(trt_dtype).rsplit(".", 1)[-1])
    if name not in _TORCH_DTYPES:
        raise RuntimeBackendError(f"TensorRT tensor type {name} has no torch equivalent this runner handles")
    return _TORCH_DTYPES[name]


class TensorRTRunner(EngineRunner):
    """Runs a folder of TensorRT engines; see the module docstring."""

    def __init__(self, folder: str | os.PathLike[str], manifest: Manifest | None = None, *, full_compute: bool = False):
        super().__init__(folder, manifest, full_compute=full_compute)
        if self.manifest.kind != "tensorrt":
            raise RuntimeBackendError(
                f"{folder} holds {self.manifest.kind} graphs, not TensorRT engines; use runtime 'ort'"
            )
        self.trt = require_tensorrt()
        built_with = self.manifest.data["tools"].get("tensorrt")
        if built_with != self.trt.__version__:
            raise RuntimeBackendError(
                f"{folder} was built with TensorRT {built_with}, this is {self.trt.__version__}; engines are not "
                "portable across TensorRT versions: build them again"
            )
        gpu = gpu_slug()
        if gpu != self.manifest.data.get("gpu"):
            raise RuntimeBackendError(
                f"{folder} was built on {self.manifest.data.get('gpu')}, this GPU is {gpu}; engines are not portable "
                "across GPU models: build them again"
            )
        self.providers = [f"TensorRT {self.trt.__version__}"]
        self._runtime = self.trt.Runtime(tensorrt_logger())
        self._engines: dict[int, Any] = {}
        self._contexts: dict[int, Any] = {}
        self._stream = torch.cuda.Stream()

    def describe(self) -> str:
        precision = self.manifest.data.get("precision", "fp32")
        return f"TensorRT {self.trt.__version__} on {torch.cuda.get_device_name()} ({precision})"

    def _context(self, graph_id: int) -> Any:
        if graph_id not in self._contexts:
            path = self.manifest.graph_path(graph_id)
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise RuntimeBackendError(f"TensorRT cannot load {path}; see the TensorRT log above")
            self._engines[graph_id] = engine
            self._contexts[graph_id] = engine.create_execution_context()
        return self._contexts[graph_id]

    def _run(self, graph_id: int, feeds: dict[str, Any]) -> list[Any]:
        ctx = self._context(graph_id)
        engine = self._engines[graph_id]
        producer = torch.cuda.current_stream()
        # Inputs are made on torch's stream; the engine's stream waits for that work first.
        self._stream.wait_stream(producer)
        with torch.cuda.stream(self._stream):
            for name, value in feeds.items():
                want = torch_dtype_of(engine.get_tensor_dtype(name))
                tensor = torch.as_tensor(value).to(device="cuda", dtype=want).contiguous()
                if not ctx.set_input_shape(name, tuple(tensor.shape)):
                    raise RuntimeBackendError(
                        f"graph {graph_id}: input '{name}' of shape {tuple(tensor.shape)} is outside the engine's "
                        "optimization profile; export again with a larger --max-batch"
                    )
                ctx.set_tensor_address(name, tensor.data_ptr())
                tensor.record_stream(self._stream)  # freed here, but not reused before the step ends
            outputs = []
            for entry in self._graphs[graph_id]["outputs"]:
                name = entry["name"]
                dtype = torch_dtype_of(engine.get_tensor_dtype(name))
                out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=dtype, device="cuda")
                ctx.set_tensor_address(name, out.data_ptr())
                outputs.append(out)
            if not ctx.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeBackendError(f"TensorRT failed to run graph {graph_id} ({self._graphs[graph_id]['file']})")
        # Outputs were allocated on the engine's stream; torch's stream waits for the step and
        # takes them over (record_stream keeps the allocator from recycling them early).
        producer.wait_stream(self._stream)
        for out in outputs:
            out.record_stream(producer)
        return outputs

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        return super().__call__(x, t, cond).to(x.device)

    def _to_torch(self, value: Any) -> torch.Tensor:
        return value
