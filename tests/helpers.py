"""Small real models and helpers shared by the tests."""

from __future__ import annotations

import math

import torch
from torch import nn

from harmonica_compile.models import DiT_models


def randomize_(model: nn.Module, seed: int = 0, scale: float = 1.0) -> nn.Module:
    """Re-draw every parameter at random (fan-in scaled). DiTs zero-initialise their gates and
    output layers; with those weights caching changes nothing, so a test could never fail."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("pos_embed"):
                continue
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                p.copy_(torch.randn(p.shape, generator=gen) * scale / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1 * scale)
    return model


def tiny_reference_dit(depth: int = 2, seed: int = 0, learn_sigma: bool = True) -> nn.Module:
    model = DiT_models["DiT-S/4"](input_size=8, num_classes=10, learn_sigma=learn_sigma)
    model.blocks = model.blocks[:depth]
    return randomize_(model, seed).eval()


def ref_inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=gen)
    t = torch.full((batch,), 500, dtype=torch.long)
    y = torch.randint(0, 11, (batch,), generator=gen)
    return x, t, y


def tiny_diffusers_dit(seed: int = 0, num_layers: int = 2) -> nn.Module:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
        norm_num_groups=1,
    )
    return randomize_(model, seed).eval()


def diffusers_dit_inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=gen),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "class_labels": torch.randint(0, 10, (batch,), generator=gen),
    }


def tiny_pixart(seed: int = 0, num_layers: int = 2) -> nn.Module:
    from diffusers import PixArtTransformer2DModel

    torch.manual_seed(seed)
    model = PixArtTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        sample_size=8,
        patch_size=2,
        cross_attention_dim=16,
        caption_channels=12,
        norm_num_groups=1,
    )
    return randomize_(model, seed).eval()


def pixart_inputs(batch: int = 2, seed: int = 0) -> dict[str, object]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 4, 8, 8, generator=gen),
        "encoder_hidden_states": torch.randn(batch, 5, 12, generator=gen),
        "timestep": torch.full((batch,), 500, dtype=torch.long),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


def output_tensor(out: object) -> torch.Tensor:
    """The sample tensor of a model output (a tensor, a tuple, or a diffusers output)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple | list):
        return out[0]
    return out.sample  # type: ignore[attr-defined]


def tiny_spec(depth: int = 2, seed: int = 0, null_class: bool = True):
    """A small, fast class-conditional reference DiT as a ModelSpec (random weights)."""
    from harmonica_compile.models.dit import DiT
    from harmonica_compile.models.registry import load_model

    model = DiT(
        input_size=8,
        patch_size=4,
        in_channels=2,
        hidden_size=64,
        depth=depth,
        num_heads=4,
        num_classes=10,
        learn_sigma=False,
        class_dropout_prob=0.1 if null_class else 0.0,
    )
    spec = load_model(randomize_(model, seed, scale=0.5).eval())
    spec.name = "tiny-test-dit"
    spec.default_cfg_scale = 2.0 if null_class else 1.0
    return spec


def tiny_spec_no_null():
    return tiny_spec(null_class=False)


def fora_schedule_dir(out) -> None:
    """``harmonica-compile optimize`` of a 4-step FORA(2) schedule for :func:`tiny_spec` into ``out``."""
    from harmonica_compile.cli import main

    argv = ["optimize", "--model", "helpers:tiny_spec", "--steps", "4", "--method", "fora", "--target-cur", "0.5"]
    assert main([*argv, "--no-eval", "--quiet", "--out", str(out)]) == 0
