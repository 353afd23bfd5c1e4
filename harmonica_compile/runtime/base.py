"""What every exported-folder runtime shares: a sampling run over a manifest's graphs.

A runner is the ``denoise(x, t, cond)`` callable of the one sampling loop. The step logic (step
from timestep, new run at step 0, the batch lock, the cache and its refresh rule) is the
:class:`~harmonica_compile.engine.StepEngine` that the torch CachedModel uses too; the runner maps
the latent, timestep and conditions onto each graph's named inputs, and subclasses only run a
graph on named arrays (ONNX Runtime, TensorRT).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine import GraphIO, StepEngine
from ..errors import InputError, RuntimeBackendError
from ..exporters.manifest import Manifest, load_manifest
from ..names import FORECAST_WEIGHTS

__all__ = ["EngineRunner"]

#: Graph inputs the step engine feeds: cached values (and their history) and the step's forecast weights.
_FED_BY_ENGINE = ("cache_in", "forecast_weights")


class EngineRunner:
    """Base class; subclasses implement :meth:`_run` (named inputs -> list of outputs)."""

    def __init__(self, folder: str | os.PathLike[str], manifest: Manifest | None = None, *, full_compute: bool = False):
        self.folder = Path(folder)
        self.manifest = manifest or load_manifest(self.folder)
        self._graphs = self.manifest.graphs
        step_graph = [int(s["graph"]) for s in self.manifest.steps]
        #: Run step 0's graph (every site computed) at every step: the full-compute reference.
        self.full_compute = full_compute
        if full_compute:
            first = step_graph[0]
            if not all(self._graphs[first]["mask"]):
                raise RuntimeBackendError(f"{self.folder}: step 0's graph does not compute every site")
            step_graph = [first] * len(step_graph)
        self._timesteps = self.manifest.timesteps
        io = [
            GraphIO(
                tuple(e["name"] for e in g["inputs"] if e["role"] in _FED_BY_ENGINE),
                tuple(e["name"] for e in g["outputs"] if e["role"] == "cache_out"),
            )
            for g in self._graphs
        ]
        step_inputs = None
        if any("forecast_weights" in s for s in self.manifest.steps):
            step_inputs = [
                {FORECAST_WEIGHTS: np.asarray(s.get("forecast_weights"), dtype=np.float32)} for s in self.manifest.steps
            ]
        #: The run's state, shared with every other runtime (hooks: ``runner.engine.add_hook``).
        self.engine = StepEngine(
            io,
            step_graph,
            self._timesteps,
            owner=str(self.folder),
            history=int(self.manifest.data["schedule"].get("history", 0)),
            step_inputs=step_inputs,
        )
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
        self.engine.reset()

    def _check_batch(self, batch: int, name: str) -> None:
        lo, hi = int(self.batch_range.get("min", 1)), int(self.batch_range.get("max", 1 << 30))
        if not lo <= batch <= hi:
            raise InputError(
                f"input '{name}' has batch {batch}, outside the range [{lo}, {hi}] {self.folder} was built for; "
                "split the batch (generate() and bench do) or export again with a larger --max-batch"
            )

    def _model_feeds(self, graph: Mapping[str, Any], x: torch.Tensor, t: torch.Tensor, cond: Any) -> dict[str, Any]:
        """The graph's model inputs (latent, timestep, conditions) by name, in graph order."""
        feeds: dict[str, Any] = {}
        conds = [i for i in graph["inputs"] if i["role"] == "condition"]
        for entry in graph["inputs"]:
            name, role = entry["name"], entry["role"]
            if role == "latent":
                feeds[name] = x
            elif role == "timestep":
                feeds[name] = t
            elif role == "condition":
                if isinstance(cond, Mapping):
                    if name not in cond:
                        raise InputError(f"condition input '{name}' is missing; got {sorted(cond)}")
                    feeds[name] = cond[name]
                elif len(conds) == 1:
                    feeds[name] = cond
                else:
                    raise InputError(f"the graph takes conditions {[c['name'] for c in conds]}; pass a dict")
            elif role not in _FED_BY_ENGINE:
                raise RuntimeBackendError(f"{self.folder}: input '{name}' has an unknown role {role!r}")
        return feeds

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        batch = int(x.shape[0])
        self._check_batch(batch, "latent")

        def run(graph_id: int, model_inputs: Any, cache_inputs: Any) -> list[Any]:
            graph = self._graphs[graph_id]
            feeds = self._model_feeds(graph, x, t, cond)
            cache_names = [e["name"] for e in graph["inputs"] if e["role"] in _FED_BY_ENGINE]
            feeds.update(zip(cache_names, cache_inputs, strict=True))
            return self._run(graph_id, {e["name"]: feeds[e["name"]] for e in graph["inputs"]})

        outputs = self.engine.step(float(t.reshape(-1)[0]), batch, (x, t, cond), run)
        return self._to_torch(outputs[0])

    # ------------------------------------------------------------------ backend
    def _run(self, graph_id: int, feeds: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def _to_torch(self, value: Any) -> torch.Tensor:
        raise NotImplementedError
