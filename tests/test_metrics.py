"""The evaluator: fidelity to full compute, digit accuracy and Frechet distance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harmonica_compile.data import load_digits16
from harmonica_compile.metrics import DigitsEvaluator, fidelity, frechet_distance


@pytest.fixture(scope="module")
def evaluator():
    return DigitsEvaluator()


@pytest.fixture(scope="module")
def digits():
    return load_digits16()


def test_fidelity_values():
    a = torch.zeros(3, 1, 4, 4)
    out = fidelity(a + 0.2, a)
    assert out["mse"] == pytest.approx(0.04)
    assert out["psnr_db"] == pytest.approx(10 * math.log10(4 / 0.04), abs=0.01)
    assert fidelity(a, a)["psnr_db"] == math.inf


def test_frechet_distance_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    var1, var2 = rng.uniform(0.1, 2, 5), rng.uniform(0.1, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)
    # a rotated copy of the same Gaussian is at distance 0
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    cov = q @ np.diag(var1) @ q.T
    assert frechet_distance(mu1, cov, mu1, cov) == pytest.approx(0.0, abs=1e-9)


def test_classifier_recognises_real_digits_and_not_shuffled_labels(evaluator, digits):
    images, labels = digits
    assert evaluator.accuracy(images, labels) >= 0.97
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert evaluator.accuracy(images, shuffled) < 0.2


def test_frechet_is_small_for_real_digits_and_large_for_noise(evaluator, digits):
    """Shipped data and classifier, float64: no float32 kernel moves these values. ``real`` is the
    even half (899) of the very digits the reference statistics come from, so only finite-sample
    error separates them: ``tr(C) / n`` = 193.5 / 899 = 0.22 in the mean term and a covariance
    term of the same order (random halves: 0.4 on average, at most 0.72 in 50 draws). What the
    bound guards against sits far above 1.0: features or statistics of the wrong images (noise
    ~400, blank ~360, transposed ~370), mirrored digits (39), digits that miss one class of ten (2.5)."""
    images, _ = digits
    real = evaluator.frechet(images[::2])
    noise = evaluator.frechet(torch.rand(500, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    blank = evaluator.frechet(torch.full((500, 1, 16, 16), -1.0) + 0.01 * torch.randn(500, 1, 16, 16))
    assert real < 1.0
    assert noise > 20 * real and blank > 20 * real


def test_evaluation_is_deterministic(evaluator, digits):
    images, labels = digits[0][:300], digits[1][:300]
    first = evaluator.evaluate(images, labels, reference=images.flip(0))
    again = DigitsEvaluator().evaluate(images, labels, reference=images.flip(0))
    assert first == again
