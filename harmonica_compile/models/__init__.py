"""Models: the reference DiT, checkpoint loading, and the shipped ``tiny-dit-digits``."""

from __future__ import annotations

from .checkpoints import infer_dit_config, load_dit_checkpoint, load_state_dict_file
from .dit import DiT, DiT_models, DiTBlock
from .pretrained import PRETRAINED, PretrainedInfo, load_pretrained, pretrained_info

__all__ = [
    "PRETRAINED",
    "DiT",
    "DiTBlock",
    "DiT_models",
    "PretrainedInfo",
    "infer_dit_config",
    "load_dit_checkpoint",
    "load_pretrained",
    "load_state_dict_file",
    "pretrained_info",
]
