"""What every exported-folder runtime shares: the step logic of a sampling run over a manifest.

A runner is the ``denoise(x, t, cond)`` callable of the one sampling loop. It finds the step from
the timestep (the first timestep starts a new run), feeds the step's graph the latent, timestep,
conditions and the cached site values it reads, keeps the refreshed ones, and returns the model's
prediction. Subclasses only run a graph on named arrays (ONNX Runtime, TensorRT).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, RuntimeBackendError, ScheduleError
from ..exporters.manifest import Manifest, load_manifest

__all__ = ["EngineRunner"]


class EngineRunner:
    """Base class; subclasses implement :meth:`_run` (named inputs -> list of outputs)."""

    def __init__(self, folder: str | os.PathLike[str], manifest: Manifest | None = None, *, full_compute: bool = False):
        self.folder = Path(folder)
        self.manifest = manifest or load_manifest(self.folder)
        self._graphs = self.manifest.graphs
        self._step_graph = [int(s["graph"]) for s in self.manifest.steps]
        #: Run step 0's graph (every site computed) at every step: the full-compute reference.
        self.full_compute = full_compute
        if full_compute:
            first = self._step_graph[0]
            if not all(self._graphs[first]["mask"]):
                raise RuntimeBackendError(f"{self.folder}: step 0's graph does not compute every site")
            self._step_graph = [first] * len(self._step_graph)
        self._timesteps = self.manifest.timesteps
        self._cache: dict[str, Any] = {}
        self._next = 0
        self._batch: int | None = None
        #: The batch sizes the graphs take: ``{"min", "opt", "max"}`` from the manifest (model batch,
        #: i.e. images x 2 with classifier-free guidance).
        self.batch_range = dict(self.manifest.data.get("batch", {"min": 1, "max": 1 << 30}))

    # ------------------------------------------------------------------ facts
    @property
    def model_name(self) -> str:
        return self.manifest.model_name

    @property
    def num_steps(self) -> int:
        return self.manifest.num_steps

    @property
    def max_batch(self) -> int:
        """The largest model batch one call takes; :func:`~harmonica_compile.sampling.generate` and
        ``bench`` split their work to fit it."""
        return int(self.batch_range.get("max", 1 << 30))

    def describe(self) -> str:
        """One line naming the runtime and the device it runs on (printed by the CLI)."""
        return type(self).__name__

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise RuntimeBackendError(
                f"{self.folder} was exported for model {self.model_name!r}, not {name!r}; export it for this model"
            )

    def check_steps(self, steps: int) -> None:
        if steps != self.num_steps:
            raise RuntimeBackendError(
                f"{self.folder} holds a {self.num_steps}-step schedule; sampling with {steps} steps needs another "
                f"export (or pass --steps {self.num_steps})"
            )

    def check_sampler(self, sampler: Any) -> None:
        """Refuse a sampler whose step count or timesteps are not the folder's, before any step runs."""
        self.check_steps(int(sampler.num_steps))
        self.check_timesteps(list(sampler.timesteps))

    def check_timesteps(self, timesteps: list[Any]) -> None:
        if [float(t) for t in timesteps] != self._timesteps:
            raise RuntimeBackendError(
                f"{self.folder} was exported for timesteps {self._timesteps[:4]}..., the sampler uses "
                f"{[float(t) for t in timesteps][:4]}...; it belongs to another sampler"
            )

    # ------------------------------------------------------------------ running
    def reset(self) -> None:
        self._cache.clear()
        self._next = 0
        self._batch = None

    def _resolve_step(self, t: torch.Tensor) -> int:
        value = float(t.reshape(-1)[0])
        expected = self._next if self._next < self.num_steps else 0
        tol = 1e-4 * max(1.0, abs(value))
        if abs(self._timesteps[expected] - value) <= tol:
            return expected
        matches = [i for i, ts in enumerate(self._timesteps) if abs(ts - value) <= tol]
        if not matches:
            raise ScheduleError(
                f"timestep {value:g} is not one of the {self.num_steps} timesteps of {self.folder}; the folder was "
                "exported for another sampler or step count"
            )
        return matches[0]

    def _check_batch(self, batch: int, name: str) -> None:
        lo, hi = int(self.batch_range.get("min", 1)), int(self.batch_range.get("max", 1 << 30))
        if not lo <= batch <= hi:
            raise InputError(
                f"input '{name}' has batch {batch}, outside the range [{lo}, {hi}] {self.folder} was built for; "
                "split the batch (generate() and bench do) or export again with a larger --max-batch"
            )

    def _feeds(self, graph: Mapping[str, Any], x: torch.Tensor, t: torch.Tensor, cond: Any) -> dict[str, Any]:
        feeds: dict[str, Any] = {}
        conds = [i for i in graph["inputs"] if i["role"] == "condition"]
        for entry in graph["inputs"]:
            name, role = entry["name"], entry["role"]
            if role == "latent":
                value = x
            elif role == "timestep":
                value = t
            elif role == "condition":
                if isinstance(cond, Mapping):
                    if name not in cond:
                        raise InputError(f"condition input '{name}' is missing; got {sorted(cond)}")
                    value = cond[name]
                elif len(conds) == 1:
                    value = cond
                else:
                    raise InputError(f"the graph takes conditions {[c['name'] for c in conds]}; pass a dict")
            elif role == "cache_in":
                if name not in self._cache:
                    raise ScheduleError(f"step {self._next}: '{name}' was never computed in this run")
                feeds[name] = self._cache[name]
                continue
            else:
                raise RuntimeBackendError(f"{self.folder}: input '{name}' has an unknown role {role!r}")
            feeds[name] = value
        return feeds

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        step = self._resolve_step(t)
        if step == 0:
            self.reset()
        batch = int(x.shape[0])
        self._check_batch(batch, "latent")
        if self._batch is not None and batch != self._batch:
            raise InputError(f"step {step}: batch {batch} but the cache holds batch {self._batch}; call reset()")
        self._batch = batch
        graph = self._graphs[self._step_graph[step]]
        self._next = step
        outputs = self._run(graph["id"], self._feeds(graph, x, t, cond))
        result = None
        for entry, value in zip(graph["outputs"], outputs, strict=True):
            if entry["role"] == "cache_out":
                if self.full_compute:
                    continue
                self._cache["cache." + entry["name"][len("new_cache.") :]] = value
            elif result is None:
                result = value
        self._next = step + 1
        if self._next >= self.num_steps:
            self.reset()
        return self._to_torch(result)

    # ------------------------------------------------------------------ backend
    def _run(self, graph_id: int, feeds: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def _to_torch(self, value: Any) -> torch.Tensor:
        raise NotImplementedError
