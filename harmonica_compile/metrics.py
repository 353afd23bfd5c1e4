"""Image-quality evaluation: fidelity to full compute, and the digits model's accuracy and Frechet distance.

- :func:`fidelity` - final-image MSE and PSNR of cached samples against full-compute samples from
  the same noise and labels (the caching literature's fidelity measure). Images are in [-1, 1], so
  PSNR uses a peak-to-peak range of 2.
- :class:`DigitsEvaluator` - for ``tiny-dit-digits``: class accuracy of generated digits under a
  digit classifier trained on the real data (shipped weights, 97.5% held-out accuracy), and the
  Frechet distance between generated and real digits in that classifier's 64-d hidden features
  (an FID analogue: the same formula, another feature space).

Evaluating a schedule (sampling full compute and cached, then these metrics) is
:mod:`harmonica_compile.evaluation`'s job.

Everything is deterministic and takes well under a second for a few hundred images.

Example:
    >>> import torch
    >>> a = torch.zeros(2, 1, 16, 16)
    >>> fidelity(a + 0.1, a)["psnr_db"]  # MSE 0.01 in a range of 2
    26.02
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .io import load_safetensors

__all__ = ["FRECHET_MIN_SAMPLES", "DigitsEvaluator", "fidelity", "frechet_distance", "frechet_note", "mse", "psnr"]

#: Below this many images the Frechet distance is dominated by its finite-sample bias (it grows
#: like tr(C)/n: about 5 at 256 tiny-dit-digits samples, 32 at 16); compare values at equal n.
FRECHET_MIN_SAMPLES = 256


def frechet_note(n: int) -> str | None:
    """A warning for a Frechet distance from ``n`` samples, or ``None`` when ``n`` is enough."""
    if n >= FRECHET_MIN_SAMPLES:
        return None
    return (
        f"the Frechet distance from {n} samples is biased upward by roughly tr(C)/n; compare it only with values "
        f"from the same number of samples ({FRECHET_MIN_SAMPLES} or more for a stable figure)"
    )


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise InputError(f"images to compare have shapes {list(a.shape)} and {list(b.shape)}; they must be equal")


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    _check_pair(a, b)
    return float((a.double() - b.double()).pow(2).mean())


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> float:
    """PSNR in dB; ``inf`` for identical images."""
    err = mse(a, b)
    return math.inf if err == 0 else 10 * math.log10(data_range**2 / err)


def fidelity(images: torch.Tensor, reference: torch.Tensor, data_range: float = 2.0) -> dict[str, float]:
    """``{"mse", "psnr_db"}`` of ``images`` against ``reference`` (PSNR rounded to 0.01 dB; per-image
    PSNR is averaged as ``psnr_db_mean``)."""
    _check_pair(images, reference)
    per_image = [psnr(a, b, data_range) for a, b in zip(images, reference, strict=True)]
    finite = [p for p in per_image if math.isfinite(p)]
    return {
        "mse": mse(images, reference),
        "psnr_db": round(psnr(images, reference, data_range), 2),
        "psnr_db_mean": round(float(np.mean(finite)), 2) if finite else math.inf,
    }


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2))``, via symmetric eigendecompositions."""
    w, v = np.linalg.eigh(cov1)
    sqrt1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    middle = sqrt1 @ cov2 @ sqrt1
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt)


class DigitsEvaluator:
    """Accuracy and Frechet distance for 16x16 digits in [-1, 1] (``tiny-dit-digits``)."""

    def __init__(self, weights: str | Path | None = None):
        path = (
            Path(weights)
            if weights
            else Path(str(resources.files("harmonica_compile.metrics_data") / "digits_classifier.safetensors"))
        )
        tensors, meta = load_safetensors(path, what="digit classifier")
        self.w1, self.b1, self.w2, self.b2 = (tensors[k].double() for k in ("w1", "b1", "w2", "b2"))
        self.classifier_accuracy = float(meta.get("held_out_accuracy", "nan"))

    def _flat(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, 16, 16):
            raise InputError(f"digits images must be [N, 1, 16, 16], got {list(images.shape)}")
        if not torch.isfinite(images).all():
            raise InputError("the images hold NaN or Inf; the sampler diverged")
        return images.detach().cpu().double().clamp(-1, 1).reshape(len(images), -1)

    def features(self, images: torch.Tensor) -> np.ndarray:
        """The classifier's 64 hidden activations, ``[N, 64]``."""
        return torch.relu(self._flat(images) @ self.w1.T + self.b1).numpy()

    def predict(self, images: torch.Tensor) -> np.ndarray:
        h = torch.relu(self._flat(images) @ self.w1.T + self.b1)
        return (h @ self.w2.T + self.b2).argmax(1).numpy()

    def accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Share of images the classifier assigns to the class they were generated for."""
        labels = torch.as_tensor(labels).cpu().numpy()
        if len(labels) != len(images):
            raise InputError(f"{len(images)} images but {len(labels)} labels")
        return float((self.predict(images) == labels).mean())

    @functools.cached_property
    def real_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        from .data import load_digits16

        feats = self.features(load_digits16()[0])
        return feats.mean(0), np.cov(feats, rowvar=False)

    def frechet(self, images: torch.Tensor) -> float:
        """Frechet distance between ``images`` and all 1,797 real digits in the classifier's features."""
        if len(images) < 2:
            raise InputError("the Frechet distance needs at least 2 images")
        feats = self.features(images)
        mu_r, cov_r = self.real_statistics
        return frechet_distance(feats.mean(0), np.cov(feats, rowvar=False), mu_r, cov_r)

    def evaluate(
        self, images: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": self.accuracy(images, labels), "frechet": self.frechet(images)}
        if reference is not None:
            out.update(fidelity(images, reference))
        return out
