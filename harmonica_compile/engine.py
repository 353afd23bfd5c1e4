"""The step engine: the state of one cached sampling run, shared by every runtime.

A sampling run is a sequence of calls. The engine turns each call into a step (from its timestep,
when the schedule carries timesteps; by counting calls otherwise), starts a new run at step 0,
keeps the batch of a run fixed, holds the cache (``cache.<site>`` -> value), feeds each step's
graph the cached values it reads and stores the values it refreshes (``new_cache.<site>`` becomes
``cache.<site>`` for later steps). For forecast branches it keeps ``history`` older values per
site (a refresh shifts ``cache`` to ``cache_h1`` and ``cache_h1`` to ``cache_h2``) and feeds the
per-step inputs a schedule fixes (``step_inputs``: the forecast weights).

What runs a graph is the runtime's business: the torch
:class:`~harmonica_compile.CachedModel`, the ONNX Runtime and TensorRT runners and the diffusers
drop-in all drive one :class:`StepEngine` and hand it a ``run(graph, model_inputs, cache_inputs)``
callable.

Observers (the export parity gate records each graph's first real inputs) subscribe with
:meth:`StepEngine.add_hook` instead of patching a runtime.

Example:
    >>> engine = StepEngine([GraphIO((), ("new_cache.a",)), GraphIO(("cache.a",), ())], [0, 1], [900.0, 0.0])
    >>> engine.step(900.0, 2, ["x"], lambda g, inputs, cache: ["out0", "fresh a"])
    ['out0']
    >>> engine.step(0.0, 2, ["x"], lambda g, inputs, cache: [f"out1 from {cache[0]}"])
    ['out1 from fresh a']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InputError, ScheduleError
from .names import HISTORY, cache_input_for
from .schedule import find_step

__all__ = ["GraphIO", "StepEngine", "StepHook"]

#: ``hook(step, graph, model_inputs, cache_inputs)``, called before a step's graph runs.
StepHook = Callable[[int, int, Sequence[Any], Sequence[Any]], None]


@dataclass(frozen=True)
class GraphIO:
    """What the engine needs to know of one graph: the ``cache.*`` inputs it reads after the model
    inputs, and the ``new_cache.*`` outputs it returns after the model outputs (both in order)."""

    cache_inputs: tuple[str, ...]
    cache_outputs: tuple[str, ...]


class StepEngine:
    """The step/cache state machine of sampling runs; see the module docstring."""

    def __init__(
        self,
        graphs: Sequence[GraphIO],
        step_graph: Sequence[int],
        timesteps: Sequence[float] | None = None,
        *,
        owner: str | None = None,
        history: int = 0,
        step_inputs: Sequence[dict[str, Any]] | None = None,
    ):
        self.graphs = list(graphs)
        if not 0 <= history < len(HISTORY):
            raise ScheduleError(f"history must be 0 to {len(HISTORY) - 1} older values, got {history}")
        #: Older computed values kept per site, beyond the last one.
        self.history = history
        #: Per step, inputs the schedule fixes (by name), fed beside the cache.
        self.step_inputs = [dict(d) for d in step_inputs] if step_inputs is not None else None
        self.step_graph = list(step_graph)
        if timesteps is not None and len(timesteps) != len(self.step_graph):
            raise ScheduleError(f"{len(timesteps)} timesteps for {len(self.step_graph)} steps")
        self.timesteps = None if timesteps is None else [float(t) for t in timesteps]
        #: Who the steps belong to, in error messages (a folder); ``None``: the schedule.
        self.owner = owner
        self.cache: dict[str, Any] = {}
        #: The step that wrote each cache entry (for error messages).
        self.filled_at: dict[str, int] = {}
        self.next_step = 0
        #: The step being run (inside :meth:`step`), else the last one run.
        self.current: int | None = None
        self.batch: int | None = None
        self._hooks: list[StepHook] = []

    @property
    def num_steps(self) -> int:
        return len(self.step_graph)

    def add_hook(self, hook: StepHook) -> Callable[[], None]:
        """Call ``hook(step, graph, model_inputs, cache_inputs)`` before every step; returns a remover."""
        self._hooks.append(hook)
        return lambda: self._hooks.remove(hook)

    def reset(self) -> None:
        """Forget the cache and start a new run at step 0."""
        self.cache.clear()
        self.filled_at.clear()
        self.next_step = 0
        self.batch = None

    def _shift(self, key: str) -> None:
        """Before ``key`` (``cache.<site>``) takes a new value, move the older ones down its history."""
        suffix = key[len(HISTORY[0]) :]
        for age in range(self.history, 0, -1):
            newer = HISTORY[age - 1] + suffix
            if newer in self.cache:
                self.cache[HISTORY[age] + suffix] = self.cache[newer]
                if newer in self.filled_at:
                    self.filled_at[HISTORY[age] + suffix] = self.filled_at[newer]

    def resolve(self, timestep: float | None) -> int:
        """The step a call with ``timestep`` runs (the next one when steps are counted by calls)."""
        if self.timesteps is None or timestep is None:
            return self.next_step % self.num_steps
        expected = self.next_step if self.next_step < self.num_steps else 0
        return find_step(self.timesteps, timestep, expected=expected, owner=self.owner)

    def step(
        self,
        timestep: float | None,
        batch: int,
        model_inputs: Sequence[Any],
        run: Callable[[int, Sequence[Any], Sequence[Any]], Sequence[Any]],
    ) -> list[Any]:
        """Run one step: resolve it, read its cache inputs, ``run(graph, model_inputs, cache_inputs)``,
        store the refreshed values; return the model outputs (what ``run`` returns before the
        ``new_cache.*`` values)."""
        step = self.resolve(timestep)
        if step == 0:
            self.reset()
        if self.batch is not None and batch != self.batch:
            raise InputError(
                f"step {step}: this call has batch {batch} but the cache holds batch {self.batch} from the previous "
                "steps of this run; call reset() before a run with another batch size"
            )
        self.batch = batch
        self.current = step
        graph = self.step_graph[step]
        io = self.graphs[graph]
        fixed = self.step_inputs[step] if self.step_inputs is not None else {}
        cache_inputs = []
        for name in io.cache_inputs:
            if name in fixed:
                cache_inputs.append(fixed[name])
                continue
            if name not in self.cache:
                raise ScheduleError(
                    f"step {step} reads '{name}' but no earlier step of this run computed it; calls must follow "
                    f"the schedule's steps in order (expected step {self.next_step}, got {step})"
                )
            cache_inputs.append(self.cache[name])
        for hook in list(self._hooks):
            hook(step, graph, model_inputs, cache_inputs)
        outputs = list(run(graph, model_inputs, cache_inputs))
        split = len(outputs) - len(io.cache_outputs)
        for name, value in zip(io.cache_outputs, outputs[split:], strict=True):
            key = cache_input_for(name)
            self._shift(key)
            self.cache[key] = value
            self.filled_at[key] = step
        self.next_step = step + 1
        if self.next_step >= self.num_steps:
            self.reset()
        return outputs[:split]
