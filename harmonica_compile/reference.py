"""HookCachedModel: the same caching, done eagerly with forward hooks on the original modules.

This is the way caching tools without a compiler do it (diffusers hooks, L2C's scripts): every
site module still runs, and a forward hook either stores its output (compute step) or replaces it
by the stored one (cached step), or, for a forecast branch, by the Newton divided-difference
extrapolation of the stored values (TaylorSeer's form, written here independently of the
schedule's Lagrange weights). It shares no code with the graph passes, which makes it the oracle
our tests compare :class:`~harmonica_compile.CachedModel` against, and a fallback for models
``torch.export`` cannot capture (it saves no compute).

Example:
    >>> import torch
    >>> from harmonica_compile import CacheSchedule
    >>> from harmonica_compile.models import DiT_models
    >>> m = DiT_models["DiT-S/8"](input_size=16, num_classes=10).eval()
    >>> m.blocks = m.blocks[:1]
    >>> ref = HookCachedModel(m, CacheSchedule.fora(["blocks.0.attn", "blocks.0.mlp"], 2, 2))
    >>> x, y = torch.randn(2, 4, 16, 16), torch.tensor([1, 2])
    >>> _ = [ref(x, torch.full((2,), t), y) for t in (999, 0)]
    >>> ref.close()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import ScheduleError
from .schedule import CacheSchedule

__all__ = ["HookCachedModel"]


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    if isinstance(value, list):
        return [_detach(v) for v in value]
    return value


def _newton(points: list[tuple[int, Any]], at: int) -> Any:
    """The polynomial through ``points`` ((step, value), most recent first) evaluated at ``at``,
    by Newton's divided differences."""
    if isinstance(points[0][1], tuple):
        return tuple(_newton([(s, v[j]) for s, v in points], at) for j in range(len(points[0][1])))
    (s1, c1), rest = points[0], points[1:]
    if not rest:
        return c1
    s2, c2 = rest[0]
    d1 = (c1 - c2) / (s1 - s2)
    out = c1 + d1 * (at - s1)
    if len(rest) > 1:
        s3, c3 = rest[1]
        d2 = (c2 - c3) / (s2 - s3)
        out = out + (d1 - d2) / (s1 - s3) * (at - s1) * (at - s2)
    return out


class HookCachedModel(nn.Module):
    """Run ``schedule`` over ``model`` by forward hooks; counts steps by calls."""

    def __init__(self, model: nn.Module, schedule: CacheSchedule):
        super().__init__()
        self.model = model
        self.schedule = schedule
        modules = dict(model.named_modules())
        missing = [s for s in schedule.sites if s not in modules]
        if missing:
            raise ScheduleError(f"the schedule names sites that are not modules of the model: {missing[:5]}")
        self._cache: dict[str, list[tuple[int, Any]]] = {}  # site -> [(step, value)], most recent first
        self._step = 0
        self._handles = [
            modules[name].register_forward_hook(self._hook(k, name)) for k, name in enumerate(schedule.sites)
        ]
        # Count steps on the model itself, so that calling the model directly (as a pipeline does)
        # follows the schedule too.
        self._handles.append(model.register_forward_hook(self._advance))

    def _hook(self, k: int, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            if self.schedule.mask[self._step][k]:
                self._cache[name] = [(self._step, _detach(output)), *self._cache.get(name, [])][:3]
                return None
            if name not in self._cache:
                raise ScheduleError(f"step {self._step} reads site '{name}' before any step computed it")
            kind = self.schedule.branches[self._step][k]
            order = {"reuse": 0, "taylor1": 1, "taylor2": 2}[kind]
            return _newton(self._cache[name][: order + 1], self._step)

        return hook

    def _advance(self, module: nn.Module, args: Any, output: Any) -> None:
        self._step += 1
        if self._step >= self.schedule.num_steps:
            self.reset()

    def reset(self) -> None:
        self._cache.clear()
        self._step = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def close(self) -> None:
        """Remove the hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
