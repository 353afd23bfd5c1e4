"""diffusers: drop-in acceleration of pipelines, training through diffusers, loading local folders.

- :func:`accelerate(pipe, schedule) <accelerate>` swaps ``pipe.transformer`` for a cached one and
  can undo it. The swapped module has the same call signature and output object, exposes the
  attributes pipelines read (``config``, ``dtype``, ``device``), finds the step from the timestep
  the pipeline passes (each pipeline call is a new sampling run), and is captured on its first
  call, with exactly the arguments the pipeline uses (``return_dict=False``, attention masks,
  CFG batches). The scheduler is checked as soon as the pipeline sets its timesteps, so a schedule
  made for another step count fails before any denoising step runs.
- :func:`spec_from_module` describes a diffusers transformer for router training: class labels
  for ``DiTTransformer2DModel``, prompt embeddings (computed once, reused) for PixArt.
- :func:`spec_from_folder` loads a local diffusers folder (a pipeline or a transformer) with
  ``local_files_only=True``: never a hub download.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, InputError, ScheduleError
from ..schedule import CacheSchedule, same_timestep

__all__ = ["AcceleratedTransformer", "accelerate", "spec_from_folder", "spec_from_module", "text_conditions"]


class AcceleratedTransformer(nn.Module):
    """A drop-in replacement of a pipeline's transformer that runs a cache schedule."""

    def __init__(self, transformer: nn.Module, schedule: CacheSchedule, *, site_rules: Any = None):
        super().__init__()
        if schedule.timesteps is None:
            raise ScheduleError(
                "a schedule for a pipeline must carry its timesteps (the step is found from the timestep the "
                "pipeline passes); train it with the pipeline's scheduler or use schedule.with_timesteps(...)"
            )
        object.__setattr__(self, "original", transformer)  # not a submodule: its weights are not ours
        self.schedule = schedule
        self.site_rules = site_rules
        self.cached: Any = None
        self._structure: Any = None

    # the attributes pipelines read from their transformer
    @property
    def config(self) -> Any:
        return self.original.config

    @property
    def dtype(self) -> torch.dtype:
        return self.original.dtype

    @property
    def device(self) -> torch.device:
        return self.original.device

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "original"), name)

    def _ensure(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import torch.utils._pytree as pytree

        from ..cacheable import prepare
        from ..cached_model import CachedModel

        leaves, spec = pytree.tree_flatten((args, kwargs))
        key = (str(spec), tuple(x if not isinstance(x, torch.Tensor) else None for x in leaves))
        if self.cached is not None and key == self._structure:
            return
        cm = prepare(self.original, (args, kwargs), site_rules=self.site_rules)
        self.cached = CachedModel(cm, self.schedule)
        self._structure = key

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._ensure(args, kwargs)
        return self.cached(*args, **kwargs)

    def reset(self) -> None:
        if self.cached is not None:
            self.cached.reset()


class _Handle:
    """What :func:`accelerate` returns: ``undo()`` restores the pipeline (also as a context manager)."""

    def __init__(self, pipe: Any, transformer: nn.Module, set_timesteps: Any, module: AcceleratedTransformer):
        self.pipe = pipe
        self.original = transformer
        self._set_timesteps = set_timesteps
        self.module = module

    def undo(self) -> None:
        self.pipe.transformer = self.original
        if self._set_timesteps is not None:
            self.pipe.scheduler.set_timesteps = self._set_timesteps

    def __enter__(self) -> _Handle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()


def accelerate(pipe: Any, schedule: CacheSchedule | str, *, site_rules: Any = None) -> _Handle:
    """Swap ``pipe.transformer`` for an :class:`AcceleratedTransformer` running ``schedule``."""
    if isinstance(schedule, str):
        schedule = CacheSchedule.load(schedule)
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, nn.Module):
        raise ConfigError(f"{type(pipe).__name__} has no transformer module to accelerate")
    if isinstance(transformer, AcceleratedTransformer):
        raise ConfigError("this pipeline is already accelerated; call undo() on the first handle")
    module = AcceleratedTransformer(transformer, schedule, site_rules=site_rules)
    scheduler = pipe.scheduler
    original = scheduler.set_timesteps
    expected = list(schedule.timesteps or ())

    def set_timesteps(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        got = [float(t) for t in scheduler.timesteps]
        if len(got) != schedule.num_steps:
            raise ScheduleError(
                f"the pipeline asks for {len(got)} denoising steps but the schedule was made for "
                f"{schedule.num_steps}; pass num_inference_steps={schedule.num_steps} or train a schedule for "
                f"{len(got)} steps"
            )
        if not all(same_timestep(a, b) for a, b in zip(got, expected, strict=True)):
            raise ScheduleError(
                f"the pipeline's scheduler uses timesteps {got[:4]}..., the schedule was made for {expected[:4]}...; "
                "train the schedule with this scheduler"
            )
        module.reset()
        return result

    scheduler.set_timesteps = set_timesteps
    pipe.transformer = module
    return _Handle(pipe, transformer, original, module)


# ---------------------------------------------------------------------------------------------- training
def text_conditions(
    embeddings: Sequence[tuple[torch.Tensor, torch.Tensor]] | Callable[[int, torch.Generator], Any],
    null: tuple[torch.Tensor, torch.Tensor] | None,
) -> Callable[[int, torch.Generator], tuple[dict[str, Any], dict[str, Any] | None]]:
    """A ``cond_fn`` drawing ``(encoder_hidden_states, encoder_attention_mask)`` pairs from a bank of
    prompt embeddings computed once (or from a callable returning such a pair for a batch)."""

    def pack(pair: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        # embeddings from a text encoder carry its autograd graph; the router must not see it
        return {"encoder_hidden_states": pair[0].detach(), "encoder_attention_mask": pair[1].detach()}

    def cond_fn(batch: int, gen: torch.Generator) -> tuple[dict[str, Any], dict[str, Any] | None]:
        if callable(embeddings):
            cond = embeddings(batch, gen)
        else:
            idx = torch.randint(0, len(embeddings), (batch,), generator=gen)
            cond = (torch.cat([embeddings[i][0] for i in idx]), torch.cat([embeddings[i][1] for i in idx]))
        nul = (
            None
            if null is None
            else (null[0].expand(batch, *null[0].shape[1:]), null[1].expand(batch, *null[1].shape[1:]))
        )
        return pack(cond), (None if nul is None else pack(nul))

    return cond_fn


def spec_from_module(
    module: nn.Module,
    *,
    name: str | None = None,
    scheduler: Any = None,
    conditions: Any = None,
    null_condition: Any = None,
    cfg_scale: float | None = None,
    steps: int = 20,
) -> Any:
    """A ModelSpec for a diffusers transformer (``DiTTransformer2DModel`` with class labels, or a
    text-conditioned one such as ``PixArtTransformer2DModel`` with ``conditions``)."""
    from ..models.spec import ModelSpec
    from ..sampling import DDIMSampler, DiffusersSampler

    config = getattr(module, "config", None)
    if config is None:
        raise ConfigError(
            f"{type(module).__name__} is neither a reference DiT nor a diffusers model; describe it with "
            "harmonica_compile.models.registry.ModelSpec(...)"
        )
    size = int(config.sample_size)
    latent = (int(config.in_channels), size, size)
    make = None if scheduler is None else (lambda n: DiffusersSampler(scheduler, n))
    cls = type(module).__name__
    if cls == "DiTTransformer2DModel":
        num = int(config.num_embeds_ada_norm)
        return ModelSpec(
            name=name or cls,
            model=module.eval(),
            latent_shape=latent,
            num_classes=num,
            null_class=num,
            kind="diffusers-dit",
            default_steps=steps,
            default_cfg_scale=cfg_scale or 1.5,
            make_sampler=make or DDIMSampler,
        )
    if conditions is None:
        raise ConfigError(
            f"{cls} is text-conditioned: pass conditions= (a list of (embeddings, attention mask) pairs computed "
            "once from your prompts, or a callable) and null_condition= (the empty prompt's pair) for CFG"
        )
    if make is None:
        from diffusers import DPMSolverMultistepScheduler

        make = lambda n: DiffusersSampler(DPMSolverMultistepScheduler(), n)
    return ModelSpec(
        name=name or cls,
        model=module.eval(),
        latent_shape=latent,
        kind="diffusers-text",
        default_steps=steps,
        default_cfg_scale=cfg_scale or (4.5 if null_condition is not None else 1.0),
        make_sampler=make,
        cond_fn=text_conditions(conditions, null_condition),
        extra={"call_kwargs": {"added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}},
    )


def spec_from_folder(path: str | os.PathLike[str]) -> Any:
    """A ModelSpec from a local diffusers folder: a pipeline (``model_index.json``) or a transformer
    (``config.json``). Only files on disk are read."""
    path = Path(path)
    try:
        import diffusers
    except ImportError as e:
        raise ConfigError(
            "loading a diffusers folder needs diffusers: pip install 'harmonica-compile[diffusers]'"
        ) from e
    if (path / "model_index.json").is_file():
        pipe = diffusers.DiffusionPipeline.from_pretrained(path, local_files_only=True)
        if not hasattr(pipe, "transformer"):
            raise InputError(f"{path}: the pipeline {type(pipe).__name__} has no transformer")
        if type(pipe.transformer).__name__ != "DiTTransformer2DModel":
            raise InputError(
                f"{path}: {type(pipe.transformer).__name__} is text-conditioned; use the Python API with "
                "spec_from_module(transformer, conditions=...) (prompts must be encoded first)"
            )
        return spec_from_module(pipe.transformer, name=str(path), scheduler=pipe.scheduler)
    if (path / "config.json").is_file():
        import json

        cls_name = json.loads((path / "config.json").read_text()).get("_class_name")
        cls = getattr(diffusers, str(cls_name), None)
        if cls is None:
            raise InputError(f"{path}/config.json names class {cls_name!r}, which diffusers does not have")
        return spec_from_module(cls.from_pretrained(path, local_files_only=True), name=str(path))
    raise InputError(
        f"{path} is a folder but neither a diffusers pipeline (model_index.json) nor a model (config.json)"
    )
