"""ModelSpec: a model and how to drive it through the pipeline.

A :class:`ModelSpec` carries the module, its latent shape, its conditioning, the sampler to use,
``denoiser(module)`` (the module, or a CachedModel over it, as the ``denoise(x, t, cond)``
callable of the sampling loop), the captured model with its sites (``cacheable()``) and the
CachedModel for a schedule (``cached(schedule)``). :mod:`harmonica_compile.models.registry` makes
specs from names; integrations make them for their frameworks.

Example:
    >>> from harmonica_compile.models.registry import load_model
    >>> spec = load_model("DiT-S/8@16")
    >>> spec.latent_shape, spec.num_classes, spec.null_class
    ((4, 16, 16), 1000, 1000)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..cacheable import prepare
from ..cached_model import CachedModel
from ..errors import ConfigError, ScheduleError
from ..sampling import DDIMSampler
from ..schedule import CacheSchedule

__all__ = ["ModelSpec"]


@dataclass
class ModelSpec:
    """A model and how to drive it; see the module docstring."""

    name: str
    model: nn.Module
    latent_shape: tuple[int, ...]
    num_classes: int | None = None
    null_class: int | None = None
    #: ``"reference-dit"`` (``model(x, t, y)``), ``"diffusers-dit"``, ``"diffusers-text"``, ``"custom"``.
    kind: str = "reference-dit"
    default_steps: int = 20
    default_cfg_scale: float = 1.0
    #: Name of the evaluator that applies (``"digits"`` for ``tiny-dit-digits``), else ``None``.
    evaluator: str | None = None
    #: Builds the sampler for a step count; DDIM over the linear-beta schedule by default.
    make_sampler: Callable[[int], Any] | None = None
    #: For text models: ``cond_fn(batch, generator) -> (cond, null_cond)``.
    cond_fn: Callable[..., tuple[Any, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def supports_cfg(self) -> bool:
        return self.null_class is not None or self.cond_fn is not None

    def sampler(self, steps: int | None = None) -> Any:
        steps = self.default_steps if steps is None else steps
        return self.make_sampler(steps) if self.make_sampler is not None else DDIMSampler(steps)

    def conditions(self, batch: int, seed: int = 0, labels: torch.Tensor | None = None) -> tuple[Any, Any]:
        """``(cond, null_cond)`` for ``batch`` samples: class labels drawn from ``seed`` (or given)."""
        if self.cond_fn is not None:
            return self.cond_fn(batch, torch.Generator().manual_seed(seed))
        if self.num_classes is None:
            raise ConfigError(f"model {self.name!r} has no conditioning this spec knows how to draw")
        if labels is None:
            labels = torch.randint(0, self.num_classes, (batch,), generator=torch.Generator().manual_seed(seed))
        null = None if self.null_class is None else torch.full((batch,), self.null_class, dtype=torch.long)
        return labels, null

    def noise(self, batch: int, seed: int = 0) -> torch.Tensor:
        return torch.randn((batch, *self.latent_shape), generator=torch.Generator().manual_seed(seed))

    def example_inputs(self, batch: int = 2) -> Any:
        """Example inputs for capture, as the sampling loop will call the model."""
        x = self.noise(batch, seed=1234)
        cond, _null = self.conditions(batch, seed=1234)
        t = torch.full((batch,), 500, dtype=torch.long)
        return self.call_args(x, t, cond)

    def call_args(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> Any:
        if self.kind == "reference-dit":
            return (x, t, cond)
        if self.kind == "diffusers-dit":
            return {"hidden_states": x, "timestep": t, "class_labels": cond}
        if self.kind == "diffusers-text":
            return {"hidden_states": x, "timestep": t, **cond, **self.extra.get("call_kwargs", {})}
        return (x, t, cond)

    def denoiser(self, module: Callable[..., Any]) -> Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]:
        """``module`` (this spec's model or a CachedModel over it) as ``denoise(x, t, cond)``."""
        kind = self.kind

        def denoise(x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
            args = self.call_args(x, t, cond)
            out = module(**args) if isinstance(args, dict) else module(*args)
            if kind.startswith("diffusers"):
                out = out[0] if isinstance(out, tuple) else out.sample
            return out

        denoise.reset = getattr(module, "reset", lambda: None)  # type: ignore[attr-defined]
        return denoise

    def cacheable(self) -> Any:
        """The captured model with its sites (:func:`harmonica_compile.prepare`), made once per spec."""
        if "cacheable" not in self.extra:
            self.extra["cacheable"] = prepare(
                self.model, self.example_inputs(2), model_name=self.name, site_rules=self.extra.get("site_rules")
            )
        return self.extra["cacheable"]

    def cached(
        self,
        schedule: CacheSchedule | str,
        *,
        steps: int | None = None,
        compile: bool = False,
        dtype: str | torch.dtype | None = None,
    ) -> CachedModel:
        """A :class:`~harmonica_compile.CachedModel` of this model for a (saved) schedule, checked
        against this spec's sampler (step count, timesteps) and model before anything runs;
        ``compile=True`` runs its step graphs through ``torch.compile``, ``dtype="bf16"`` their token
        matmuls in bf16 (see :class:`~harmonica_compile.CachedModel`)."""
        if isinstance(schedule, str):
            schedule = CacheSchedule.load(schedule)
        steps = schedule.num_steps if steps is None else steps
        if schedule.num_steps != steps:
            raise ScheduleError(
                f"the schedule has {schedule.num_steps} steps but sampling uses {steps}; train a schedule for "
                f"{steps} steps or sample with --steps {schedule.num_steps}"
            )
        want = [float(t) for t in self.sampler(steps).timesteps]
        if schedule.timesteps is not None and list(schedule.timesteps) != want:
            raise ScheduleError(
                f"the schedule was made for timesteps {list(schedule.timesteps)[:4]}... but the sampler uses "
                f"{want[:4]}...; it belongs to another sampler"
            )
        model_name = schedule.meta.get("model")
        if model_name and model_name != self.name:
            raise ScheduleError(f"the schedule was made for model {model_name!r}, not {self.name!r}")
        return CachedModel(self.cacheable(), schedule, compile=compile, dtype=dtype)

    def describe(self) -> dict[str, Any]:
        n = sum(p.numel() for p in self.model.parameters()) + sum(b.numel() for b in self.model.buffers())
        return {
            "name": self.name,
            "kind": self.kind,
            "class": type(self.model).__name__,
            "parameters": n,
            "latent_shape": list(self.latent_shape),
            "num_classes": self.num_classes,
            "null_class": self.null_class,
            "default_steps": self.default_steps,
            "default_cfg_scale": self.default_cfg_scale,
        }
