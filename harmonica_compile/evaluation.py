"""Evaluating a schedule: sample with full compute and with the cached schedule from the same
noise seeds, then compare (:mod:`harmonica_compile.metrics`), and count FLOPs.

Full-compute samples are made once per process for each ``(model, num, seed, steps, cfg)`` and
reused across the schedules being compared.

Seeds: evaluation noise comes from :data:`EVAL_SEED` and the refinement search's calibration noise
from its own seed (``TrainConfig.calibration_seed``, 1_000_000_009), each one generator stream;
training draws its batches from ``seed * 1_000_003 + iteration`` (and ``seed + 7919`` for IEPO's
lambda), below 10**9 for any seed under 999, so no evaluation image is ever trained or searched on.
"""

from __future__ import annotations

from typing import Any

import torch

from .metrics import DigitsEvaluator, fidelity
from .sampling import generate

__all__ = ["EVAL_SEED", "evaluate_schedule", "flops_report", "full_compute_samples"]

#: The noise seed of every evaluation (see the module docstring).
EVAL_SEED = 1_000_000_007


def flops_report(cached: Any) -> dict[str, Any]:
    """``flops_full`` / ``flops_cached`` per image-run and the theoretical speedup of a CachedModel."""
    steps = cached.num_steps
    full = cached.flops_full * steps
    per_step = [cached.flops(i) for i in range(steps)]
    return {
        "flops_full": int(full),
        "flops_cached": int(sum(per_step)),
        "theoretical_speedup": full / max(sum(per_step), 1),
        "flops_per_step": per_step,
        "flops_batch": int(cached.cacheable.captured.batch_size),
    }


_FULL_SAMPLES: dict[tuple[Any, ...], tuple[torch.Tensor, Any]] = {}


def full_compute_samples(
    spec: Any, *, num: int, seed: int, steps: int, cfg_scale: float, batch_size: int = 64, progress: bool = False
) -> tuple[torch.Tensor, Any]:
    """Full-compute samples for ``(spec, num, seed, steps, cfg)``, made once per process."""
    key = (spec.name, id(spec.model), num, seed, steps, cfg_scale)
    if key not in _FULL_SAMPLES:
        _FULL_SAMPLES[key] = generate(
            spec, num=num, steps=steps, cfg_scale=cfg_scale, seed=seed, batch_size=batch_size, progress=progress
        )
    return _FULL_SAMPLES[key]


def evaluate_schedule(
    spec: Any,
    schedule: Any,
    *,
    num: int = 256,
    seed: int = EVAL_SEED,
    cfg_scale: float | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict[str, Any]:
    """Quality and FLOPs of ``schedule`` on ``spec``: cached vs full-compute samples from the same
    ``num`` noise seeds. Keys: ``final_mse``, ``psnr_db``, FLOPs, and for digits ``accuracy`` /
    ``frechet`` of both cached and full-compute samples."""
    steps = schedule.num_steps
    cfg = spec.default_cfg_scale if cfg_scale is None else cfg_scale
    full, labels = full_compute_samples(
        spec, num=num, seed=seed, steps=steps, cfg_scale=cfg, batch_size=batch_size, progress=progress
    )
    cached_model = spec.cached(schedule, steps=steps)
    images, _ = generate(
        spec,
        spec.denoiser(cached_model),
        num=num,
        steps=steps,
        cfg_scale=cfg,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        progress_label="cached",
    )
    fid = fidelity(images, full)
    out: dict[str, Any] = {
        "eval_num": num,
        "eval_seed": seed,
        "eval_cfg_scale": cfg,
        "cur": schedule.cur,
        "final_mse": fid["mse"],
        "psnr_db": fid["psnr_db"],
        **flops_report(cached_model),
    }
    if spec.evaluator == "digits" and labels is not None:
        ev = DigitsEvaluator()
        out.update(
            {
                "accuracy": ev.accuracy(images, labels),
                "frechet": ev.frechet(images),
                "accuracy_full": ev.accuracy(full, labels),
                "frechet_full": ev.frechet(full),
            }
        )
    out.pop("flops_per_step", None)
    return out
