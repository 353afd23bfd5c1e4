"""Generate a set of samples from a model spec: fixed noise and labels per seed, in batches.

The same ``seed`` gives the same noise and labels whatever runs the model, so samples from full
compute, a cached schedule, ONNX Runtime or TensorRT are comparable image by image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["generate", "sample_set"]


def sample_set(spec: Any, num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The noise ``[num, *latent]`` and class labels (balanced over the classes) for ``seed``."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigError(f"num must be an integer >= 1, got {num!r}")
    noise = spec.noise(num, seed=seed)
    labels = None if spec.num_classes is None else torch.arange(num) % spec.num_classes
    return noise, labels


def generate(
    spec: Any,
    denoise: Callable[..., torch.Tensor] | None = None,
    *,
    num: int = 16,
    steps: int | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    sampler: Any = None,
    progress: bool = False,
    clamp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, labels)``: ``num`` samples of ``spec`` through ``denoise`` (default: the eager model).

    ``images`` is ``[num, C, H, W]`` float32, clamped to [-1, 1] unless ``clamp=False``.
    """
    from . import sample

    steps = spec.default_steps if steps is None else steps
    cfg_scale = spec.default_cfg_scale if cfg_scale is None else float(cfg_scale)
    if cfg_scale != 1.0 and not spec.supports_cfg:
        raise ConfigError(
            f"cfg_scale {cfg_scale} needs a null class, but model {spec.name!r} has none "
            "(it was trained without label dropout); use cfg_scale=1"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    sampler = spec.sampler(steps) if sampler is None else sampler
    denoise = spec.denoiser(spec.model) if denoise is None else denoise
    noise, labels = sample_set(spec, num, seed)
    out = []
    batches = range(0, num, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc=f"sampling {num} images", unit="batch")
    for start in batches:
        stop = min(start + batch_size, num)
        if labels is not None:
            cond, null = spec.conditions(stop - start, labels=labels[start:stop])
        else:
            cond, null = spec.conditions(stop - start, seed=seed + start)
        x = sample(denoise, noise[start:stop], cond, sampler, cfg_scale=cfg_scale, null_cond=null)
        out.append(x.float())
    images = torch.cat(out)
    return (images.clamp(-1, 1) if clamp else images), labels
