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


# ------------------------------------------------------------------ float32 equivalence tolerances
#: Unit roundoff of float32 (round to nearest): one rounding has relative error at most 2**-24.
U32 = 2.0**-24


def fp32_atol(reference: torch.Tensor, roundings: int) -> float:
    """Largest difference two float32 evaluations of the same function can show, to first order.

    An evaluation that rounds at most ``roundings`` times along its longest dependency chain has a
    relative error of at most ``roundings * u`` (u = 2**-24; the first-order forward error bound
    ``gamma_n = n u / (1 - n u)``), measured at the magnitude of the values it carries. Two such
    evaluations (eager and a captured graph, two kernels, two summation orders) differ by at most
    ``2 * roundings * u * max|values|``. The tests' models are fan-in scaled (:func:`randomize_`),
    so their activations are O(1): ``max|values|`` is taken as ``max(max|reference|, 1)``. Any
    amplification beyond that (the sin/cos of a large timestep argument, guidance, a sampler's
    coefficients) is the caller's to count; :func:`dit_roundings` counts one DiT forward.
    """
    return 2 * roundings * U32 * max(float(reference.detach().abs().max()), 1.0)


def dit_roundings(
    *,
    hidden: int,
    depth: int,
    mlp_hidden: int,
    tokens: int,
    head_dim: int,
    patch_in: int,
    context_tokens: int = 0,
    context_in: int = 0,
    freq: int = 256,
    t_max: int = 1000,
) -> int:
    """Roundings along the longest dependency chain of one forward of a DiT-style transformer.

    A length-K dot product or reduction counts K (sequential summation, the worst case), an
    elementwise op 1; the stages are added up, which bounds the longest chain from above:

    - timestep: ``t * exp(-log(P) * k / half)`` rounds 4 times and sin/cos scale the argument's
      error by the argument itself (<= ``t_max``): ``4 * t_max``; then the embedding MLP
      (``freq``, ``hidden``) and the adaLN linear (``hidden``), with SiLUs (3 each);
    - patch embedding: the ``patch_in``-long convolution and the position embedding (1);
    - per block: two layer norms (``2 * hidden + 5`` each: mean, variance, eps, rsqrt, scale), two
      modulations (2 each), self-attention (q/k/v ``hidden``, scale 1, q.k ``head_dim``, softmax
      ``tokens + 3``, weights.v ``tokens``, out projection ``hidden``), a cross-attention of the
      same shape over ``context_tokens`` when there is one, the MLP (``hidden``, tanh-GELU 8,
      ``mlp_hidden``), gates and residual adds (4);
    - a context projection (``context_in``, GELU 8, ``hidden``) when there is a context;
    - final layer: layer norm, modulation (2), linear (``hidden``).
    """
    layer_norm = 2 * hidden + 5

    def attention(keys: int) -> int:
        return hidden + 1 + head_dim + (keys + 3) + keys + hidden

    cond = 4 * t_max + 1 + freq + 3 + hidden + 3 + hidden
    embed = patch_in + 1
    block = 2 * layer_norm + 2 * 2 + attention(tokens) + hidden + 8 + mlp_hidden + 4
    context = 0
    if context_tokens:
        block += attention(context_tokens) + 1
        context = context_in + 8 + hidden
    final = layer_norm + 2 + hidden
    return cond + embed + context + depth * block + final


def tiny_roundings(name: str, depth: int = 2) -> int:
    """:func:`dit_roundings` of one forward of the small models above, at ``depth`` blocks.

    ``reference-dit`` (:func:`tiny_reference_dit`: DiT-S/4 on 8x8x4 latents, hidden 384, 6 heads,
    4 tokens, MLP 1536, 4x4x4 patches), ``diffusers-dit`` and ``pixart-alpha``
    (:func:`tiny_diffusers_dit`, :func:`tiny_pixart`: hidden 16, 2 heads, 16 tokens, MLP 64, 2x2x4
    patches; PixArt adds 5 caption tokens of 12 channels, or up to 16 in a pipeline) and
    ``tiny-spec`` (:func:`tiny_spec`: hidden 64, 4 heads, 4 tokens, MLP 256, 4x4x2 patches).
    """
    small = {"hidden": 16, "mlp_hidden": 64, "tokens": 16, "head_dim": 8, "patch_in": 16}
    shapes = {
        "reference-dit": {"hidden": 384, "mlp_hidden": 1536, "tokens": 4, "head_dim": 64, "patch_in": 64},
        "diffusers-dit": small,
        "pixart-alpha": {**small, "context_tokens": 16, "context_in": 12},
        "tiny-spec": {"hidden": 64, "mlp_hidden": 256, "tokens": 4, "head_dim": 16, "patch_in": 32},
    }
    return dit_roundings(depth=depth, **shapes[name])
