"""ONNX Runtime runner: one InferenceSession per distinct graph, cache tensors carried between steps.

Providers: CUDA and TensorRT execution providers are used when ONNX Runtime offers them (the
``gpu`` extra installs onnxruntime-gpu), else the CPU provider. On a GPU, inputs, caches and
outputs stay on the device through IO binding; on the CPU, arrays are passed directly.

Example (with a folder written by ``harmonica-compile export``)::

    runner = OrtRunner("engines/tiny")
    images, labels = generate(load_model(runner.model_name), runner, num=16)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..errors import RuntimeBackendError
from ..exporters.manifest import Manifest
from .base import EngineRunner

__all__ = ["OrtRunner", "default_providers"]


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    preferred = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in preferred if p in available] or available


class OrtRunner(EngineRunner):
    def __init__(
        self,
        folder: str | os.PathLike[str],
        manifest: Manifest | None = None,
        *,
        providers: list[str] | None = None,
        threads: int | None = None,
        optimization: str = "all",
        full_compute: bool = False,
        spinning: bool = False,
    ):
        super().__init__(folder, manifest, full_compute=full_compute)
        if self.manifest.kind != "onnx":
            raise RuntimeBackendError(f"{folder} holds {self.manifest.kind} engines; open it with runtime 'trt'")
        import onnxruntime as ort

        self._ort = ort
        self.providers = providers or default_providers()
        self.threads = threads
        self.spinning = spinning
        levels = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization not in levels:
            raise RuntimeBackendError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
        self.level = levels[optimization]
        self._sessions: dict[int, Any] = {}
        self.on_gpu = self.providers[0] != "CPUExecutionProvider"

    def session(self, graph_id: int) -> Any:
        if graph_id not in self._sessions:
            options = self._ort.SessionOptions()
            options.graph_optimization_level = self.level
            if self.threads:
                options.intra_op_num_threads = self.threads
                options.inter_op_num_threads = 1
            # Every session owns a thread pool whose idle workers spin for new work. A schedule
            # alternates between several sessions, so idle pools spin on the cores the running
            # one needs: measured on tiny-dit-digits FORA(2), 2 threads, the cached loop was no
            # faster than full compute (0.50 of the FLOP speedup) with spinning, 0.90 without.
            spin = "1" if self.spinning else "0"
            options.add_session_config_entry("session.intra_op.allow_spinning", spin)
            options.add_session_config_entry("session.inter_op.allow_spinning", spin)
            path = self.manifest.graph_path(graph_id)
            try:
                self._sessions[graph_id] = self._ort.InferenceSession(str(path), options, providers=self.providers)
            except Exception as e:
                raise RuntimeBackendError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0][:300]}") from e
        return self._sessions[graph_id]

    def warmup(self) -> None:
        for g in self._graphs:
            self.session(g["id"])

    def run_graph(self, graph_id: int, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run one graph on positional numpy inputs (in manifest order); used by the parity gate."""
        names = [i["name"] for i in self._graphs[graph_id]["inputs"]]
        return list(self.session(graph_id).run(None, dict(zip(names, arrays, strict=True))))

    def _array(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
        return value

    def _run(self, graph_id: int, feeds: dict[str, Any]) -> list[Any]:
        sess = self.session(graph_id)
        if not self.on_gpu:
            return list(sess.run(None, {k: self._array(v) for k, v in feeds.items()}))
        binding = sess.io_binding()
        for name, value in feeds.items():
            if not isinstance(value, self._ort.OrtValue):
                value = self._ort.OrtValue.ortvalue_from_numpy(self._array(value), "cuda", 0)
            binding.bind_ortvalue_input(name, value)
        for out in sess.get_outputs():
            binding.bind_output(out.name, "cuda", 0)
        sess.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def _to_torch(self, value: Any) -> torch.Tensor:
        if isinstance(value, np.ndarray):
            return torch.from_numpy(value)
        return torch.from_numpy(value.numpy())
