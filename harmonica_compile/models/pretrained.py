"""Pretrained models shipped inside the package (no network, ever).

``load_pretrained("tiny-dit-digits")`` returns the reference DiT trained on scikit-learn's digits
by :mod:`harmonica_compile.models.train_tiny_dit`. Its model card (recipe, measured quality,
sampling defaults) is ``weights/tiny-dit-digits.json`` next to the weights.

Example:
    >>> model = load_pretrained("tiny-dit-digits")
    >>> model.input_size, model.in_channels, model.num_classes, len(model.blocks)
    (16, 1, 10, 6)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, ConfigError
from .checkpoints import load_dit_checkpoint
from .dit import DiT

__all__ = ["PRETRAINED", "PretrainedInfo", "load_pretrained", "pretrained_info"]


@dataclass(frozen=True)
class PretrainedInfo:
    name: str
    weights: str
    card: str
    description: str

    def weights_path(self) -> Path:
        return Path(str(resources.files("harmonica_compile.models") / "weights" / self.weights))

    def card_path(self) -> Path:
        return Path(str(resources.files("harmonica_compile.models") / "weights" / self.card))

    def load_card(self) -> dict[str, Any]:
        path = self.card_path()
        if not path.is_file():
            raise ArtifactError(f"model card {path} is missing from the installed package; reinstall harmonica-compile")
        return json.loads(path.read_text())

    @property
    def sampling_defaults(self) -> dict[str, Any]:
        """``{"steps", "cfg_scale"}`` recommended for this model (from its card)."""
        return dict(self.load_card().get("sampling_defaults", {"steps": 20, "cfg_scale": 1.0}))


PRETRAINED: dict[str, PretrainedInfo] = {
    "tiny-dit-digits": PretrainedInfo(
        name="tiny-dit-digits",
        weights="tiny-dit-digits.safetensors",
        card="tiny-dit-digits.json",
        description="DiT, 6 blocks, hidden 128, patch 2, on 16x16 scikit-learn digits, 10 classes + null class",
    ),
}


def pretrained_info(name: str) -> PretrainedInfo:
    if name not in PRETRAINED:
        raise ConfigError(f"unknown pretrained model {name!r}; known models: {', '.join(sorted(PRETRAINED))}")
    return PRETRAINED[name]


def load_pretrained(name: str = "tiny-dit-digits") -> DiT:
    """Load a shipped pretrained model by name, in eval mode, from package data only."""
    info = pretrained_info(name)
    path = info.weights_path()
    if not path.is_file():
        raise ArtifactError(
            f"the weights of {name!r} ({path}) are missing from the installed package; reinstall "
            "harmonica-compile, or re-create them with python -m harmonica_compile.models.train_tiny_dit"
        )
    model = load_dit_checkpoint(path)
    model.pretrained_name = name  # type: ignore[attr-defined]
    return model
