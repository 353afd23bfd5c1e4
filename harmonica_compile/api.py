"""The one-line entry points: ``find_cache_sites`` and ``optimize``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .cacheable import CacheableModel, prepare
from .cached_model import CachedModel
from .errors import ConfigError, ScheduleError
from .passes import SiteRule
from .schedule import CacheSchedule

__all__ = ["find_cache_sites", "optimize"]


def find_cache_sites(
    model: nn.Module | CacheableModel, example_inputs: Any = None, *, site_rules: Sequence[SiteRule] | None = None
) -> list[str]:
    """The model's cache sites (module paths), in execution order."""
    if isinstance(model, CacheableModel):
        return list(model.site_names)
    if example_inputs is None:
        raise ConfigError("find_cache_sites needs example_inputs to capture the model")
    return list(prepare(model, example_inputs, site_rules=site_rules).site_names)


def optimize(
    model: nn.Module | CacheableModel,
    example_inputs: Any = None,
    *,
    schedule: CacheSchedule | str | None = None,
    site_rules: Sequence[SiteRule] | None = None,
    check_finite: bool = False,
    compile: bool = False,
    dtype: str | torch.dtype | None = None,
    **train_options: Any,
) -> CachedModel:
    """A :class:`CachedModel` running ``schedule`` over ``model``.

    ``schedule`` is a :class:`CacheSchedule` or the path of a saved one. When it is ``None`` a
    schedule is trained first (``method="harmonica"|"l2c"|"fora"``, ``target_cur=...``,
    ``num_steps=...``; see :func:`harmonica_compile.training.train_schedule`). ``compile=True`` runs
    the step graphs through ``torch.compile`` (see :mod:`harmonica_compile.compiling`);
    ``dtype="bf16"``/``"fp16"`` runs their token matmuls in that dtype, norms, softmax, adaLN and
    caches in fp32 (see :mod:`harmonica_compile.passes.lower_precision`).

    A diffusers model (``ModelMixin``) is accelerated in place instead and returned itself, so that
    ``pipe.transformer = optimize(pipe.transformer, example, schedule=...)`` keeps every pipeline
    API working, as the ``torch.compile`` form does (see
    :class:`~harmonica_compile.integrations.diffusers.AcceleratedTransformer`;
    ``remove_acceleration(transformer)`` undoes it).
    """
    if isinstance(schedule, str):
        schedule = CacheSchedule.load(schedule)
    if model is None:
        raise ConfigError("optimize needs a model")
    if not isinstance(model, CacheableModel) and example_inputs is None:
        raise ConfigError("optimize needs example_inputs to capture the model (a tuple of args, a dict, or both)")
    cacheable = prepare(model, example_inputs, site_rules=site_rules)
    if schedule is None:
        from .training import train_schedule

        spec = train_options.pop("spec", None)
        if spec is None and not isinstance(model, CacheableModel):
            from .models.registry import spec_for_module

            spec = spec_for_module(model)
        schedule = train_schedule(cacheable, spec=spec, **train_options).schedule
    elif train_options:
        raise ConfigError(f"training options {sorted(train_options)} were given with a schedule; pass one or the other")
    if not isinstance(schedule, CacheSchedule):
        raise ScheduleError(f"schedule must be a CacheSchedule or a path, got {type(schedule).__name__}")
    cached = CachedModel(cacheable, schedule, check_finite=check_finite, compile=compile, dtype=dtype)  # checks sites
    if _is_diffusers_model(model):
        from .integrations.diffusers import AcceleratedTransformer

        acceleration = AcceleratedTransformer(model, schedule, site_rules=site_rules, compile=compile, dtype=dtype)
        acceleration.seed(example_inputs, cached)
        return model  # type: ignore[return-value]
    return cached


def _is_diffusers_model(model: Any) -> bool:
    return any(c.__module__.startswith("diffusers.") and c.__name__ == "ModelMixin" for c in type(model).__mro__)


def cached_for_spec(spec: Any, schedule: CacheSchedule | str, *, steps: int | None = None) -> CachedModel:
    """``spec.cached(schedule, steps=steps)``: a CachedModel of a model spec for a saved schedule,
    checked against the sampler's step count and timesteps before anything runs."""
    return spec.cached(schedule, steps=steps)
