"""Classifier-free guidance with batched conditional and null halves (DiT's convention).

The model sees ``[x; x]`` with conditions ``[cond; null]``; the guided prediction is
``uncond + scale * (cond - uncond)``; ``scale == 1`` means no guidance (and no doubled batch).
DiT's ``forward_with_cfg`` guides only the first three channels by default; we guide every noise
channel, the standard definition.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import InputError

__all__ = ["cat_conditions", "guide", "slice_conditions", "split_learned_sigma", "uses_cfg"]


def uses_cfg(scale: float) -> bool:
    return float(scale) != 1.0


def cat_conditions(cond: Any, null: Any) -> Any:
    """``[cond; null]`` for tensors, or key by key for dicts of tensors (``None`` values kept)."""
    if isinstance(cond, torch.Tensor):
        return torch.cat([cond, null], dim=0)
    if isinstance(cond, Mapping):
        return {k: (None if cond[k] is None else cat_conditions(cond[k], null[k])) for k in cond}
    raise InputError(
        f"conditions must be tensors or dicts of tensors, got {type(cond).__name__}; pass class labels as a tensor"
    )


def slice_conditions(cond: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of conditions (a tensor, a dict of tensors, or ``None``)."""
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return cond[start:stop]
    if isinstance(cond, Mapping):
        return {k: slice_conditions(v, start, stop) for k, v in cond.items()}
    raise InputError(f"conditions must be tensors or dicts of tensors, got {type(cond).__name__}")


def split_learned_sigma(out: torch.Tensor, channels: int) -> torch.Tensor:
    """The noise prediction of a model output: with ``learn_sigma`` the output has twice the latent
    channels and the first half is the noise (DiT, PixArt)."""
    if out.shape[1] == 2 * channels:
        return out[:, :channels]
    return out


def guide(out: torch.Tensor, scale: float) -> torch.Tensor:
    """Combine the conditional (first half) and null (second half) predictions."""
    cond, uncond = out.chunk(2, dim=0)
    return uncond + scale * (cond - uncond)
