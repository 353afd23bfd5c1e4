"""StepRunner: one denoising step of a cacheable model, with guidance, for training and IEPO.

It wraps three graphs of the same captured model:

- ``teacher``: the captured graph, every site computed, no cache read or written;
- ``student``: the soft routed graph (``r * fresh + (1 - r) * cache``), the router value as input;
- ``hard``: the same with a boolean mask (``where(mask, fresh, cache)``), gradient-free.

A cache is a list of tensors, one per site output in site order (``slots``). Trajectories under a
hard mask (:meth:`StepRunner.trajectory`) share their prefix when asked to record their states,
which IEPO uses to regenerate only the steps after the one it changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..cacheable import CacheableModel
from ..sampling import guided_output, model_inputs

__all__ = ["StepRunner", "TrajectoryState"]


@dataclass
class TrajectoryState:
    """The latent and the cache just before step ``step``."""

    step: int
    x: torch.Tensor
    cache: list[torch.Tensor]
    sampler_state: object = None


class StepRunner:
    def __init__(self, cacheable: CacheableModel, spec: Any, sampler: Any, cfg_scale: float):
        self.cm = cacheable
        self.spec = spec
        self.sampler = sampler
        self.cfg_scale = float(cfg_scale)
        self.captured = cacheable.captured
        self.teacher = cacheable.graph_module
        self.student = cacheable.routed("soft")
        self.hard = cacheable.routed("hard")
        #: (site index, output index) of every cache tensor, in graph input order
        self.slots = [(k, j) for k, s in enumerate(cacheable.sites) for j in range(s.num_outputs)]
        self.num_model_outputs = len(self.captured.output_names)

    @property
    def num_sites(self) -> int:
        return self.cm.num_sites

    def flat_inputs(self, x: torch.Tensor, index: int, cond: Any, null: Any) -> list[torch.Tensor]:
        x_in, t_in, c_in = model_inputs(self.sampler, x, index, cond, self.cfg_scale, null)
        args = self.spec.call_args(x_in, t_in, c_in)
        if isinstance(args, dict):
            return self.captured.flatten_inputs((), args)
        return self.captured.flatten_inputs(args, {})

    def eps(self, out: torch.Tensor, channels: int) -> torch.Tensor:
        return guided_output(out, channels, self.cfg_scale)

    def empty_cache(self, flat: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        batch = self.captured.batch_of(flat)
        cache = self.cm.example_cache(batch, flat[0].device)
        return list(cache.values())

    # ------------------------------------------------------------------ single steps
    def teacher_step(self, flat: Sequence[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self.teacher(*flat)[0]

    def student_step(
        self, flat: Sequence[torch.Tensor], cache: Sequence[torch.Tensor], gate: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        outs = self.student(*flat, *cache, gate)
        return outs[0], list(outs[self.num_model_outputs :])

    def hard_step(
        self, flat: Sequence[torch.Tensor], cache: Sequence[torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.no_grad():
            outs = self.hard(*flat, *cache, mask)
        return outs[0], list(outs[self.num_model_outputs :])

    def refresh(self, cache: list[torch.Tensor], fresh: Sequence[torch.Tensor], computed: torch.Tensor) -> None:
        """Store the fresh value of every site that ``computed`` marks (the cache refresh rule)."""
        flags = computed.tolist()
        for slot, (k, _) in enumerate(self.slots):
            if flags[k]:
                cache[slot] = fresh[slot].detach()

    # ------------------------------------------------------------------ trajectories
    def trajectory(
        self,
        noise_or_state: torch.Tensor | TrajectoryState,
        cond: Any,
        null: Any,
        mask: torch.Tensor,
        *,
        record: bool = False,
    ) -> tuple[torch.Tensor, list[TrajectoryState]]:
        """Sample under a hard ``mask`` ``[T, S]`` (True = compute) from noise or a recorded state;
        return ``x_0`` and, with ``record``, the state before every step."""
        if isinstance(noise_or_state, TrajectoryState):
            start, x, cache = noise_or_state.step, noise_or_state.x, list(noise_or_state.cache)
            self.sampler.restore(noise_or_state.sampler_state)
        else:
            start, x, cache = 0, noise_or_state * self.sampler.init_noise_sigma, None
        states: list[TrajectoryState] = []
        channels = x.shape[1]
        with torch.no_grad():
            if start == 0:
                self.sampler.start()
            for i in range(start, self.sampler.num_steps):
                flat = self.flat_inputs(x, i, cond, null)
                if cache is None:
                    cache = self.empty_cache(flat)
                if record:
                    states.append(TrajectoryState(i, x, list(cache), self.sampler.snapshot()))
                out, fresh = self.hard_step(flat, cache, mask[i])
                self.refresh(cache, fresh, mask[i])
                x = self.sampler.step(self.eps(out, channels), i, x)
        return x, states
