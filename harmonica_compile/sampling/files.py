"""Sample files: the ``.npz`` that ``harmonica-compile sample`` writes and ``evaluate`` reads.

``images`` (``[N, C, H, W]`` float32 in [-1, 1]), ``labels`` when the model is class-conditional,
and ``meta`` (a JSON string: model, steps, guidance, seed, what ran the model). Written atomically;
read without pickle.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ArtifactError
from ..io import atomic_write_bytes

__all__ = ["load_samples", "save_samples"]


def save_samples(
    path: str | os.PathLike[str], images: torch.Tensor, labels: torch.Tensor | None, meta: dict[str, Any]
) -> Path:
    """Write ``images``, ``labels`` and ``meta`` to ``path`` (atomically); return the path."""
    arrays: dict[str, Any] = {"images": images.numpy().astype(np.float32), "meta": np.array(json.dumps(meta))}
    if labels is not None:
        arrays["labels"] = labels.numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_samples(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``.npz`` written by :func:`save_samples` (no pickled objects allowed)."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"samples file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except Exception as e:
        raise ArtifactError(f"samples file {path} is not a readable .npz ({type(e).__name__}: {e})") from e
    if "images" not in out:
        raise ArtifactError(f"samples file {path} holds no 'images' array (found {sorted(out)})")
    return out
