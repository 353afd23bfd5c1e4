"""IEPO: the image-error proxy ``lambda_t`` that weights each step's loss.

- ``paper``: ``lambda_t = ||x0^(t) - x0||_F^2`` with ``x0`` generated under the current hard masks
  and ``x0^(t)`` under the same masks except that step t computes every site.
- ``incremental`` (the reference code's variant): start from full compute, add the routers step by
  step in sampling order; ``lambda_t`` is the change of ``x0`` when step t's router is added.

Both are gradient-free. Trajectories that agree up to step t are not recomputed: the run under
the current masks records its states and every variant restarts from the state it shares, so one
refresh costs about ``T^2 / 2`` model steps instead of ``T^2``. ``lambda_t`` is summed over the
images (callers average it over processes) and then normalised to mean 1 over the learned steps.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .runner import StepRunner

__all__ = ["compute_lambda", "normalize_lambda"]


def compute_lambda(
    runner: StepRunner, mask: torch.Tensor, noise: torch.Tensor, cond: Any, null: Any, mode: str
) -> torch.Tensor:
    """Raw ``lambda`` ``[T]`` (``lambda[0] = 0``: the first step always computes)."""
    T = mask.shape[0]
    lam = torch.zeros(T, dtype=torch.float64)
    if mode == "none":
        lam[1:] = 1.0
        return lam
    x0, states = runner.trajectory(noise, cond, null, mask, record=True)
    if mode == "paper":
        for t in range(1, T):
            if bool(mask[t].all()):
                continue  # computing step t fully changes nothing: lambda_t = 0
            variant = mask.clone()
            variant[t] = True
            x0_t, _ = runner.trajectory(states[t], cond, null, variant)
            lam[t] = (x0_t.double() - x0.double()).pow(2).sum()
        return lam
    if mode == "incremental":
        full = torch.ones_like(mask)
        prev, _ = runner.trajectory(states[1], cond, null, full)  # routers of no step yet
        for t in range(1, T):
            if t + 1 < T:
                variant = full.clone()
                variant[: t + 1] = mask[: t + 1]
                x0_t, _ = runner.trajectory(states[t + 1], cond, null, variant)
            else:
                x0_t = x0
            lam[t] = (x0_t.double() - prev.double()).pow(2).sum()
            prev = x0_t
        return lam
    raise ConfigError(f"unknown lambda mode {mode!r}; use 'paper', 'incremental' or 'none'")


def normalize_lambda(lam: torch.Tensor, floor: float) -> torch.Tensor:
    """Mean 1 over steps 1..T-1, floored at ``floor``; all ones when every raw value is 0."""
    out = torch.zeros_like(lam, dtype=torch.float64)
    learned = lam[1:].double()
    mean = float(learned.mean()) if len(learned) else 0.0
    out[1:] = 1.0 if mean <= 0 else (learned / mean).clamp(min=floor)
    return out
