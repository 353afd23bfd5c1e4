"""Generate a set of samples from a model spec: fixed noise and labels per seed, in batches.

The same ``seed`` gives the same noise and conditions whatever runs the model and however the work
is split into batches, so samples from full compute, a cached schedule, ONNX Runtime or TensorRT
are comparable image by image. A ``denoise`` with a ``max_batch`` (an exported folder's runner)
gets batches that fit it: classifier-free guidance doubles the model batch, so at most
``max_batch // 2`` images per call then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import ConfigError
from .guidance import slice_conditions, uses_cfg
from .loop import sample

__all__ = ["fit_batch", "generate", "sample_set"]


def sample_set(spec: Any, num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The noise ``[num, *latent]`` and class labels (balanced over the classes) for ``seed``."""
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigError(f"num must be an integer >= 1, got {num!r}")
    noise = spec.noise(num, seed=seed)
    labels = None if spec.num_classes is None else torch.arange(num) % spec.num_classes
    return noise, labels


def fit_batch(denoise: Any, batch_size: int, cfg_scale: float) -> int:
    """Images per call so that the model batch fits ``denoise.max_batch`` (when it has one)."""
    limit = getattr(denoise, "max_batch", None)
    if limit is None:
        return batch_size
    per_model_batch = 2 if uses_cfg(cfg_scale) else 1
    fits = int(limit) // per_model_batch
    if fits < 1:
        raise ConfigError(
            f"the engine takes a model batch of at most {limit}, and guidance (cfg_scale {cfg_scale:g}) doubles "
            "the batch, so not even one image fits; export with --max-batch 2 or more, or sample with --cfg-scale 1"
        )
    return min(batch_size, fits)


def _check_labels(spec: Any, labels: Any, num: int) -> torch.Tensor:
    if spec.num_classes is None:
        raise ConfigError(f"model {spec.name!r} is not class-conditional; it takes no labels")
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() != num:
        raise ConfigError(f"got {labels.numel()} labels for {num} samples")
    bad = labels[(labels < 0) | (labels >= spec.num_classes)]
    if bad.numel():
        raise ConfigError(f"label {int(bad[0])} is outside [0, {spec.num_classes - 1}] of model {spec.name!r}")
    return labels


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
    progress_label: str | None = None,
    clamp: bool = True,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(images, labels)``: ``num`` samples of ``spec`` through ``denoise`` (default: the eager model).

    ``images`` is ``[num, C, H, W]`` float32, clamped to [-1, 1] unless ``clamp=False``; with
    ``progress``, a bar per batch (``progress_label`` names what samples). ``labels`` (``[num]``
    class labels) replaces the balanced labels of :func:`sample_set`; the noise stays the seed's.
    """
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
    label = progress_label or ("full compute" if denoise is None else None)
    denoise = spec.denoiser(spec.model) if denoise is None else denoise
    batch_size = fit_batch(denoise, batch_size, cfg_scale)
    check = getattr(denoise, "check_sampler", None)
    if callable(check):
        check(sampler)
    noise, balanced = sample_set(spec, num, seed)
    labels = balanced if labels is None else _check_labels(spec, labels, num)
    # conditions for all samples at once, then sliced: the same for every batch split
    if labels is not None:
        all_cond, all_null = spec.conditions(num, labels=labels)
    else:
        all_cond, all_null = spec.conditions(num, seed=seed)
    out = []
    batches = range(0, num, batch_size)
    if progress:
        from tqdm import tqdm

        desc = f"sampling {num} images{', ' + label if label else ''} ({batch_size} per batch)"
        batches = tqdm(batches, desc=desc, unit="batch")
    for start in batches:
        stop = min(start + batch_size, num)
        cond = slice_conditions(all_cond, start, stop)
        null = slice_conditions(all_null, start, stop)
        x = sample(denoise, noise[start:stop], cond, sampler, cfg_scale=cfg_scale, null_cond=null)
        out.append(x.float())
    images = torch.cat(out)
    return (images.clamp(-1, 1) if clamp else images), labels
