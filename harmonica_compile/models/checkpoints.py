"""Loading DiT checkpoints: the public ``DiT-XL-2-256x256.pt`` files and our safetensors files.

Nothing is ever unpickled beyond tensors: ``.pt`` files go through ``torch.load(weights_only=True)``
(DiT's training checkpoints also hold an ``argparse.Namespace``, which is the one extra type we
allow), and the model configuration is inferred from the tensor shapes.

Example:
    >>> import tempfile, torch
    >>> from harmonica_compile.models import DiT_models
    >>> m = DiT_models["DiT-S/8"](input_size=16, num_classes=10)
    >>> path = tempfile.mkdtemp() + "/dit.pt"
    >>> torch.save(m.state_dict(), path)
    >>> load_dit_checkpoint(path).blocks[0].attn.num_heads
    6
"""

from __future__ import annotations

import argparse
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import ArtifactError
from ..io import load_safetensors
from .dit import DiT

__all__ = ["infer_dit_config", "load_dit_checkpoint", "load_state_dict_file"]

# hidden size -> heads, as in the public DiT configurations
_HEADS_BY_HIDDEN = {1152: 16, 1024: 16, 768: 12, 384: 6}


def load_state_dict_file(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (and safetensors metadata) from a ``.safetensors`` or ``.pt`` checkpoint file."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"checkpoint {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise ArtifactError(f"checkpoint {path} is empty; it was probably not written completely")
    if path.suffix == ".safetensors":
        return load_safetensors(path, what="checkpoint")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise ArtifactError(
            f"checkpoint {path} cannot be loaded as weights only ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "it may be truncated, or hold Python objects we refuse to unpickle"
        ) from e
    if isinstance(obj, Mapping):
        for key in ("ema", "model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ArtifactError(
            f"checkpoint {path} holds no state dict of tensors (found {type(obj).__name__}); "
            "expected a DiT state dict, or a training checkpoint with an 'ema' or 'model' entry"
        )
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    return state, {}


def infer_dit_config(
    state: Mapping[str, torch.Tensor], *, source: str = "checkpoint", num_heads: int | None = None
) -> dict[str, Any]:
    """DiT constructor arguments from a state dict's tensor shapes. The number of heads is not in the
    weights: it comes from ``num_heads`` or, for the public hidden sizes, from their configuration."""
    try:
        pos = state["pos_embed"]
        proj = state["x_embedder.proj.weight"]
        table = state["y_embedder.embedding_table.weight"]
        final = state["final_layer.linear.weight"]
    except KeyError as e:
        raise ArtifactError(
            f"{source} is not a DiT checkpoint: key {e.args[0]!r} is missing (a DiT state dict has pos_embed, "
            "x_embedder.proj.weight, y_embedder.embedding_table.weight, blocks.N.*, final_layer.*)"
        ) from None
    hidden = int(pos.shape[-1])
    patch = int(proj.shape[-1])
    in_channels = int(proj.shape[1])
    grid = math.isqrt(int(pos.shape[1]))
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    out_channels = int(final.shape[0]) // (patch * patch)
    heads = num_heads or _HEADS_BY_HIDDEN.get(hidden)
    if heads is None:
        raise ArtifactError(
            f"{source}: hidden size {hidden} is not one of the public DiT sizes {sorted(_HEADS_BY_HIDDEN)}, so the "
            "number of heads is unknown; pass num_heads=..."
        )
    mlp_hidden = int(state["blocks.0.mlp.fc1.weight"].shape[0]) if depth else 4 * hidden
    return {
        "input_size": grid * patch,
        "patch_size": patch,
        "in_channels": in_channels,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": heads,
        "mlp_ratio": mlp_hidden / hidden,
        "num_classes": int(table.shape[0]) - 1,
        "class_dropout_prob": 0.1,
        "learn_sigma": out_channels == 2 * in_channels,
    }


def load_dit_checkpoint(path: str | os.PathLike[str], *, strict: bool = True, **overrides: Any) -> DiT:
    """A :class:`DiT` (eval mode) with the weights of ``path``; config from safetensors metadata or
    inferred from the shapes, with ``overrides`` (e.g. ``num_heads=...``) applied on top."""
    import json

    state, metadata = load_state_dict_file(path)
    if "config" in metadata:
        try:
            config = json.loads(metadata["config"])
        except json.JSONDecodeError as e:
            raise ArtifactError(f"checkpoint {path}: the 'config' metadata is not valid JSON ({e})") from e
    else:
        config = infer_dit_config(state, source=f"checkpoint {path}", num_heads=overrides.get("num_heads"))
    config.update(overrides)
    model = DiT(**config)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ArtifactError(
            f"checkpoint {path} does not fit DiT({config}): {str(e).splitlines()[0]}. {_key_report(model, state)}"
        ) from e
    return model.eval()


def _key_report(model: DiT, state: Mapping[str, torch.Tensor]) -> str:
    want = set(model.state_dict())
    have = set(state)
    missing = sorted(want - have)
    extra = sorted(have - want)
    shapes = sorted(k for k in want & have if tuple(model.state_dict()[k].shape) != tuple(state[k].shape))
    parts = []
    if missing:
        parts.append(f"missing keys: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        parts.append(f"unexpected keys: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    if shapes:
        parts.append(f"shape mismatches: {shapes[:5]}")
    return "; ".join(parts)
