"""The shipped tiny-dit-digits: loads from package data with no network, and makes digits."""

from __future__ import annotations

import socket

import pytest

from harmonica_compile.metrics import DigitsEvaluator
from harmonica_compile.models import PRETRAINED, load_pretrained
from harmonica_compile.models.registry import load_model
from harmonica_compile.sampling import generate


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_loading_the_shipped_weights_needs_no_network(no_network):
    model = load_pretrained("tiny-dit-digits")
    assert len(model.blocks) >= 6 and model.has_null_class and model.num_classes == 10
    info = PRETRAINED["tiny-dit-digits"]
    assert info.weights_path().stat().st_size <= 10 * 2**20
    card = info.load_card()
    assert card["recipe"]["steps"] > 0 and card["evaluation"]["by_cfg_scale"]
    assert card["sampling_defaults"] == {"steps": 20, "cfg_scale": 1.5}


def test_it_makes_digits_of_the_asked_class():
    """A quality bar on shipped weights, not an equivalence. A model, sampler or guidance that loses
    the class gives chance accuracy 0.1 (P(>= 54 of 60 right) ~ 1e-47). The model card measures
    0.996 on 500 digits at these defaults; even at the classifier's own held-out error on real
    digits, 2.5%, seven or more misses of 60 (accuracy < 0.9) have probability 7e-4 (binomial), so
    float32 rounding that flips a borderline digit or two cannot fail it."""
    spec = load_model("tiny-dit-digits")
    images, labels = generate(spec, num=60, seed=1)  # 20 DDIM steps, default guidance
    assert DigitsEvaluator().accuracy(images, labels) >= 0.9
    assert images.shape == (60, 1, 16, 16) and images.abs().max() <= 1
