"""The one sampling loop. Eager modules, :class:`~harmonica_compile.CachedModel`, and the ONNX
Runtime and TensorRT runners differ only in the callable that runs a step.

``sample(denoise, noise, cond, sampler, cfg_scale=..., null_cond=...)``: ``denoise(x, t, cond)``
returns the model output for a batch (``t`` a tensor of timesteps), ``sampler`` is a
:class:`~harmonica_compile.sampling.DDIMSampler` or a diffusers scheduler adapter.

Example:
    >>> import torch
    >>> from harmonica_compile.sampling import DDIMSampler, sample
    >>> zero = lambda x, t, y: torch.zeros_like(x)  # a "model" that predicts no noise
    >>> x0 = sample(zero, torch.ones(2, 1, 4, 4), torch.tensor([0, 1]), DDIMSampler(10))
    >>> round(float(x0.mean()), 1)  # with eps = 0, DDIM rescales x_T by 1 / sqrt(alpha_bar(900))
    60.8
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from ..errors import InputError
from .guidance import cat_conditions, guide, split_learned_sigma, uses_cfg

__all__ = ["Sampler", "sample"]


class Sampler(Protocol):
    """What the loop needs from a sampler."""

    num_steps: int
    timesteps: list[Any]
    timestep_dtype: torch.dtype
    init_noise_sigma: float

    def start(self) -> None: ...

    def snapshot(self) -> object: ...

    def restore(self, state: object) -> None: ...

    def scale_model_input(self, x: torch.Tensor, index: int) -> torch.Tensor: ...

    def step(self, model_output: torch.Tensor, index: int, x: torch.Tensor) -> torch.Tensor: ...


def model_inputs(
    sampler: Sampler, x: torch.Tensor, index: int, cond: Any, cfg_scale: float, null_cond: Any
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """The batch the model sees at step ``index``: scaled latents (doubled for CFG), timesteps, conditions."""
    cfg = uses_cfg(cfg_scale)
    x_in = torch.cat([x, x]) if cfg else x
    x_in = sampler.scale_model_input(x_in, index)
    c_in = cat_conditions(cond, null_cond) if cfg else cond
    t_in = torch.full((x_in.shape[0],), sampler.timesteps[index], dtype=sampler.timestep_dtype, device=x.device)
    return x_in, t_in, c_in


def guided_output(out: torch.Tensor, channels: int, cfg_scale: float) -> torch.Tensor:
    """The model output the sampler steps with: sigma channels dropped, guidance applied."""
    eps = split_learned_sigma(out, channels)
    return guide(eps, cfg_scale) if uses_cfg(cfg_scale) else eps


def sample(
    denoise: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
    noise: torch.Tensor,
    cond: Any,
    sampler: Sampler,
    *,
    cfg_scale: float = 1.0,
    null_cond: Any = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the denoising loop from ``noise`` and return the final sample ``x_0``."""
    if uses_cfg(cfg_scale) and null_cond is None:
        raise InputError(f"cfg_scale {cfg_scale} needs a null condition (null_cond); pass cfg_scale=1 to disable")
    if not torch.isfinite(noise).all():
        raise InputError("the initial noise holds NaN or Inf")
    reset = getattr(denoise, "reset", None) or getattr(getattr(denoise, "__self__", None), "reset", None)
    if callable(reset):
        reset()
    sampler.start()
    x = noise * sampler.init_noise_sigma
    steps = range(sampler.num_steps)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="sampling", leave=False)
    with torch.no_grad():
        for i in steps:
            x_in, t_in, c_in = model_inputs(sampler, x, i, cond, cfg_scale, null_cond)
            out = denoise(x_in, t_in, c_in)
            x = sampler.step(guided_output(out, x.shape[1], cfg_scale), i, x)
            if callback is not None:
                callback(i, x)
    return x
