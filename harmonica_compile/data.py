"""The digits data set that ``tiny-dit-digits`` is trained on and evaluated against.

scikit-learn bundles UCI's optical digits (1,797 images of 8x8 pixels, 10 classes) inside its
wheel, so no download is involved. We upsample them to 16x16 (bilinear) and scale to [-1, 1].
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DIGITS_SIZE", "load_digits16"]

DIGITS_SIZE = 16


@functools.lru_cache(maxsize=1)
def _digits16() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0).unsqueeze(1)  # [N, 1, 8, 8] in [0, 1]
    images = F.interpolate(images, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1) * 2 - 1
    return images.numpy(), data.target.astype(np.int64)


def load_digits16() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(images [N, 1, 16, 16] float32 in [-1, 1], labels [N] int64)``."""
    images, labels = _digits16()
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())
