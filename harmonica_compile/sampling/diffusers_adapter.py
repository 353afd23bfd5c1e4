"""Drive any diffusers scheduler through our sampler interface (``DDIMScheduler``,
``DPMSolverMultistepScheduler``, ``FlowMatchEulerDiscreteScheduler``, ...).

Example:
    >>> from diffusers import DDIMScheduler
    >>> s = DiffusersSampler(DDIMScheduler(num_train_timesteps=1000), 20)
    >>> s.timesteps[:3], s.num_steps
    ([950, 900, 850], 20)
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["DiffusersSampler"]


class DiffusersSampler:
    """A copy of ``scheduler`` set to ``num_steps``; the user's scheduler is left as it was."""

    def __init__(self, scheduler: Any, num_steps: int, device: torch.device | str = "cpu"):
        if not hasattr(scheduler, "set_timesteps") or not hasattr(scheduler, "step"):
            raise ConfigError(f"expected a diffusers scheduler, got {type(scheduler).__name__}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
            raise ConfigError(f"steps must be an integer >= 1, got {num_steps!r}")
        self.scheduler = copy.deepcopy(scheduler)
        self.device = device
        self._requested = num_steps
        self.start()
        ts = self.scheduler.timesteps
        self.timestep_dtype = ts.dtype
        self.timesteps: list[Any] = [int(t) if not ts.is_floating_point() else float(t) for t in ts]
        self.num_steps = len(self.timesteps)
        self.name = type(scheduler).__name__
        self.prediction_type = getattr(self.scheduler.config, "prediction_type", "flow")

    def __repr__(self) -> str:
        return f"DiffusersSampler({self.name}, num_steps={self.num_steps})"

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_steps": self.num_steps,
            "timesteps": list(self.timesteps),
            "scheduler_config": {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")},
        }

    @property
    def init_noise_sigma(self) -> float:
        return float(getattr(self.scheduler, "init_noise_sigma", 1.0))

    def start(self) -> None:
        """Reset the scheduler's state (multistep solvers keep earlier model outputs)."""
        self.scheduler.set_timesteps(self._requested, device=self.device)

    def snapshot(self) -> object:
        """The scheduler's state between steps (multistep solvers remember earlier outputs)."""
        return copy.deepcopy(self.scheduler.__dict__)

    def restore(self, state: object) -> None:
        self.scheduler.__dict__.update(copy.deepcopy(state))  # type: ignore[arg-type]

    def scale_model_input(self, x: torch.Tensor, index: int) -> torch.Tensor:
        scale = getattr(self.scheduler, "scale_model_input", None)
        return x if scale is None else scale(x, self.scheduler.timesteps[index])

    def step(self, model_output: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor:
        return self.scheduler.step(model_output, self.scheduler.timesteps[index], x, return_dict=False)[0]
