"""ONNX Runtime runner: one InferenceSession per distinct graph, cache tensors carried between steps.

Providers. By default a runner uses ``CUDAExecutionProvider`` when this ONNX Runtime offers it
(the ``gpu`` extra installs onnxruntime-gpu), and the CPU provider otherwise. The TensorRT
execution provider is used only when asked for (``providers=["TensorrtExecutionProvider", ...]``):
it then gets an engine cache and a timing cache in the folder's ``ort_tensorrt_cache/`` and one
optimization profile per graph spanning the manifest's batch range, so it neither rebuilds per
batch size nor per process. Which providers a session really got is read back from the session
(``session.get_providers()``): ONNX Runtime silently drops a provider it cannot start, and a
runner that believed the requested list would bind inputs to a device that is not there.

On a GPU session, caches stay on the device between steps as ``OrtValue`` (IO binding); on the
CPU, numpy arrays are passed directly: ONNX Runtime reads a contiguous array in place and the
outputs it allocates become the next steps' cache inputs as they are, so nothing is copied per
step. Measured on tiny-dit-digits FORA(2), 8 images, 2 threads: everything outside
``InferenceSession.run`` (the engine, feeds, guidance, the sampler update) is 0.7 ms of a step,
against 2-4 ms for a step with every site cached; what remains of a cached step is the
graph's own broadcast Mul/Add work (the gated residual adds of the cached values), not copies.
``optimization`` (``"all"``, the default; ``"extended"``, ``"basic"``, ``"disabled"``) sets the
graph optimization level; "all" and "basic" were within run-to-run noise on whole schedules there.

Example (with a folder written by ``harmonica-compile export``)::

    runner = OrtRunner("engines/tiny")
    images, labels = generate(load_model(runner.model_name), runner, num=16)
    print(runner.active_providers)  # e.g. ['CPUExecutionProvider']
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, RuntimeBackendError
from ..exporters.manifest import Manifest
from .base import EngineRunner

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "TENSORRT_PROVIDER",
    "OrtRunner",
    "default_providers",
    "import_onnxruntime",
    "onnxruntime_install_problem",
    "resolve_providers",
]

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
_DEVICE_OF = {CUDA_PROVIDER: "cuda", TENSORRT_PROVIDER: "cuda"}


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a RuntimeBackendError saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeBackendError(
            "ONNX Runtime is not installed: pip install 'harmonica-compile[cpu]' (or '[gpu]' on a machine with an "
            "NVIDIA GPU; never both)"
        ) from e
    return onnxruntime


def _installed_distributions() -> set[str]:
    names = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            names.add(re.sub(r"[-_.]+", "-", name).lower())
    return names


def onnxruntime_install_problem() -> str | None:
    """Why this environment's ONNX Runtime may not be the one a user meant, or ``None``.

    ``onnxruntime`` and ``onnxruntime-gpu`` install the same module; with both installed the files
    of whichever was installed last are the ones imported, and the GPU providers may be gone.
    """
    names = _installed_distributions()
    flavours = sorted(n for n in names if n in ("onnxruntime", "onnxruntime-gpu"))
    if len(flavours) > 1:
        return (
            f"both {' and '.join(flavours)} are installed and overwrite each other's files; keep one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu (GPU) or onnxruntime (CPU)"
        )
    return None


def default_providers() -> list[str]:
    """CUDA when this ONNX Runtime offers it, then the CPU; never TensorRT unless asked for."""
    available = import_onnxruntime().get_available_providers()
    return [p for p in (CUDA_PROVIDER, CPU_PROVIDER) if p in available] or [CPU_PROVIDER]


def resolve_providers(requested: Sequence[str] | None) -> tuple[list[str], str | None]:
    """``(providers, note)``: the requested providers this ONNX Runtime offers, in order.

    A provider that is not offered is dropped with a ``note`` saying so when another requested
    provider remains (ONNX Runtime's own fallback rule, made visible); when none remains, a
    RuntimeBackendError says why and how to fix it.
    """
    ort = import_onnxruntime()
    if requested is None:
        return default_providers(), None
    if isinstance(requested, str):
        requested = [p for p in requested.split(",") if p]
    requested = list(requested)
    if not requested:
        raise ConfigError("providers must name at least one ONNX Runtime execution provider")
    known = set(ort.get_all_providers())
    unknown = [p for p in requested if p not in known]
    if unknown:
        raise ConfigError(
            f"unknown ONNX Runtime providers {unknown}; known ones include {CUDA_PROVIDER}, {TENSORRT_PROVIDER} "
            f"and {CPU_PROVIDER}"
        )
    available = ort.get_available_providers()
    kept = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if not missing:
        return kept, None
    why = f"this ONNX Runtime {ort.__version__} offers only {available}"
    problem = onnxruntime_install_problem()
    if problem:
        why += f" ({problem})"
    elif any(p in _DEVICE_OF for p in missing):
        why += "; GPU providers need onnxruntime-gpu and an NVIDIA GPU: pip install 'harmonica-compile[gpu]'"
    if not kept:
        raise RuntimeBackendError(f"ONNX Runtime cannot run on {missing}: {why}; or ask for {CPU_PROVIDER}")
    return kept, f"{', '.join(missing)} not available, running on {', '.join(kept)}: {why}"


class OrtRunner(EngineRunner):
    """Runs an exported ONNX folder in ONNX Runtime; see the module docstring."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        manifest: Manifest | None = None,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        optimization: str = "all",
        full_compute: bool = False,
        spinning: bool = False,
        tensorrt_cache: str | os.PathLike[str] | None = None,
    ):
        super().__init__(folder, manifest, full_compute=full_compute)
        if self.manifest.kind != "onnx":
            raise RuntimeBackendError(f"{folder} holds {self.manifest.kind} engines; open it with runtime 'trt'")
        ort = import_onnxruntime()
        self._ort = ort
        #: The providers sessions are created with (what was asked for, less what is not offered).
        self.providers, self.provider_note = resolve_providers(providers)
        if self.provider_note:
            warnings.warn(f"ONNX Runtime: {self.provider_note}", RuntimeWarning, stacklevel=2)
        self.threads = threads
        self.spinning = spinning
        self.tensorrt_cache = Path(tensorrt_cache) if tensorrt_cache else self.folder / "ort_tensorrt_cache"
        levels = {
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }
        if optimization not in levels:
            raise RuntimeBackendError(f"optimization must be one of {sorted(levels)}, got {optimization!r}")
        self.level = levels[optimization]
        self._sessions: dict[int, Any] = {}
        self._device: dict[int, str | None] = {}  # graph id -> "cuda" for GPU sessions, None on the CPU

    # ------------------------------------------------------------------ sessions
    @property
    def active_providers(self) -> list[str]:
        """The providers the created sessions actually run on (read back from ONNX Runtime)."""
        seen: list[str] = []
        for sess in self._sessions.values():
            seen += [p for p in sess.get_providers() if p not in seen]
        return seen

    @property
    def on_gpu(self) -> bool:
        """Whether any created session runs on a GPU provider."""
        return any(d is not None for d in self._device.values())

    def _provider_options(self, graph_id: int) -> list[tuple[str, dict[str, str]]]:
        out = []
        for p in self.providers:
            options: dict[str, str] = {}
            if p == TENSORRT_PROVIDER:
                self.tensorrt_cache.mkdir(parents=True, exist_ok=True)
                options = {
                    "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(self.tensorrt_cache),
                    "trt_timing_cache_enable": "True",
                    "trt_timing_cache_path": str(self.tensorrt_cache),
                    "trt_fp16_enable": "False",
                    **self._profile_shapes(graph_id),
                }
            out.append((p, options))
        return out

    def _profile_shapes(self, graph_id: int) -> dict[str, str]:
        """TensorRT EP profile options: every batched input from the manifest's min to max batch."""
        batch = self.batch_range
        entries = [e for e in self._graphs[graph_id]["inputs"] if "batch" in e["shape"]]
        if not entries:
            return {}

        def shapes(size: int) -> str:
            return ",".join(
                f"{e['name']}:" + "x".join(str(size if d == "batch" else d) for d in e["shape"]) for e in entries
            )

        return {
            "trt_profile_min_shapes": shapes(int(batch["min"])),
            "trt_profile_opt_shapes": shapes(int(batch.get("opt", batch["max"]))),
            "trt_profile_max_shapes": shapes(int(batch["max"])),
        }

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
            providers = self._provider_options(graph_id)
            try:
                sess = self._ort.InferenceSession(str(path), options, providers=providers)
            except Exception as e:
                raise RuntimeBackendError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0][:300]}") from e
            got = sess.get_providers()
            self._device[graph_id] = _DEVICE_OF.get(got[0]) if got else None
            self._sessions[graph_id] = sess
        return self._sessions[graph_id]

    def warmup(self) -> None:
        for g in self._graphs:
            self.session(g["id"])

    def describe(self) -> str:
        """One line naming the ONNX Runtime version and the providers the sessions run on."""
        active = self.active_providers or self.providers
        return f"ONNX Runtime {self._ort.__version__} on {', '.join(active)}"

    # ------------------------------------------------------------------ running
    def run_graph(self, graph_id: int, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Run one graph on positional numpy inputs (in manifest order); used by the parity gate."""
        names = [i["name"] for i in self._graphs[graph_id]["inputs"]]
        outs = self._run(graph_id, dict(zip(names, arrays, strict=True)))
        return [self._numpy(v) for v in outs]

    def _numpy(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().numpy()
        if isinstance(value, self._ort.OrtValue):
            return value.numpy()
        return value

    def _run(self, graph_id: int, feeds: dict[str, Any]) -> list[Any]:
        sess = self.session(graph_id)
        device = self._device[graph_id]
        if device is None:
            return list(sess.run(None, {k: self._numpy(v) for k, v in feeds.items()}))
        binding = sess.io_binding()
        for name, value in feeds.items():
            if not isinstance(value, self._ort.OrtValue) or value.device_name() != device:
                value = self._ort.OrtValue.ortvalue_from_numpy(self._numpy(value), device, 0)
            binding.bind_ortvalue_input(name, value)
        for out in sess.get_outputs():
            binding.bind_output(out.name, device, 0)
        sess.run_with_iobinding(binding)
        return list(binding.get_outputs())

    def _to_torch(self, value: Any) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._numpy(value)))
