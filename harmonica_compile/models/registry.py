"""Model specs: what the CLI, training and benchmarks need to know to run a model.

``load_model(name)`` accepts

- ``tiny-dit-digits`` (the shipped pretrained model, the default);
- a reference configuration such as ``DiT-S/2`` or ``DiT-B/2`` (random weights, for speed only;
  append ``@<latent size>`` for another latent size, e.g. ``DiT-S/2@16``);
- a DiT checkpoint file (``.pt`` / ``.safetensors``, e.g. the public ``DiT-XL-2-256x256.pt``);
- ``package.module:factory`` (a callable returning a module, or a :class:`ModelSpec`) and a local
  diffusers folder (see :mod:`harmonica_compile.integrations.diffusers`).

The :class:`~harmonica_compile.models.spec.ModelSpec` it returns carries the module and how to
drive it (its own module, which integrations import).

Example:
    >>> spec = load_model("DiT-S/8@16")
    >>> spec.latent_shape, spec.num_classes, spec.null_class
    ((4, 16, 16), 1000, 1000)
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ArtifactError, ConfigError, InputError
from .dit import DiT, DiT_models
from .pretrained import PRETRAINED, load_pretrained
from .spec import ModelSpec

__all__ = ["ModelSpec", "known_model_names", "load_model", "randomize_reference", "spec_for_module"]


def randomize_reference(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Random weights for speed measurements: every trainable tensor ~ N(0, std), so no gate is zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def _reference_spec(
    name: str, model: DiT, *, evaluator: str | None = None, steps: int = 20, cfg: float = 1.0
) -> ModelSpec:
    return ModelSpec(
        name=name,
        model=model.eval(),
        latent_shape=(model.in_channels, model.input_size, model.input_size),
        num_classes=model.num_classes,
        null_class=model.num_classes if model.has_null_class else None,
        kind="reference-dit",
        default_steps=steps,
        default_cfg_scale=cfg,
        evaluator=evaluator,
    )


_REFERENCE = re.compile(r"^(DiT-(?:XL|L|B|S)/(?:2|4|8))(?:@(\d+))?$")


def known_model_names() -> list[str]:
    return sorted(PRETRAINED) + sorted(DiT_models)


def load_model(name: str | nn.Module | ModelSpec = "tiny-dit-digits", *, seed: int = 0) -> ModelSpec:
    """A :class:`ModelSpec` for ``name``; see the module docstring."""
    spec = _load_model(name, seed=seed)
    if isinstance(name, str):
        spec.extra.setdefault("source", name)
    return spec


def _load_model(name: str | nn.Module | ModelSpec, *, seed: int = 0) -> ModelSpec:
    if isinstance(name, ModelSpec):
        return name
    if isinstance(name, DiT):
        return _reference_spec(getattr(name, "pretrained_name", type(name).__name__), name)
    if isinstance(name, nn.Module):
        raise ConfigError(
            f"pass a ModelSpec for a {type(name).__name__}; only reference DiTs are described automatically"
        )
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model must be a name, got {name!r}")
    if name in PRETRAINED:
        info = PRETRAINED[name]
        defaults = info.sampling_defaults
        return _reference_spec(
            name,
            load_pretrained(name),
            evaluator="digits" if "digits" in name else None,
            steps=int(defaults.get("steps", 20)),
            cfg=float(defaults.get("cfg_scale", 1.0)),
        )
    match = _REFERENCE.match(name)
    if match:
        size = int(match.group(2) or 32)
        torch.manual_seed(seed)
        try:
            model = DiT_models[match.group(1)](input_size=size)
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from e
        return _reference_spec(name, randomize_reference(model, seed))
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".safetensors", ".bin") and not path.exists():
        raise ArtifactError(
            f"checkpoint file {path} does not exist; check the path "
            f"(or use a known model name: {', '.join(known_model_names())})"
        )
    if path.suffix in (".pt", ".pth", ".safetensors", ".bin"):
        from .checkpoints import load_dit_checkpoint

        return _reference_spec(path.name, load_dit_checkpoint(path))
    if path.is_dir():
        from ..integrations.diffusers import spec_from_folder

        return spec_from_folder(path)
    if ":" in name and not path.exists():
        return _from_factory(name)
    raise InputError(
        f"unknown model {name!r}; known models: {', '.join(known_model_names())}; or pass a DiT checkpoint "
        "(.pt/.safetensors), a local diffusers folder, or package.module:factory"
    )


def spec_for_module(model: nn.Module) -> ModelSpec:
    """A spec for a module given to :func:`harmonica_compile.optimize` (reference DiT or diffusers)."""
    if isinstance(model, DiT):
        return _reference_spec(getattr(model, "pretrained_name", type(model).__name__), model)
    from ..integrations.diffusers import spec_from_module

    return spec_from_module(model, name=type(model).__name__)


def _from_factory(ref: str) -> ModelSpec:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"cannot import {module_name!r} for model {ref!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"{module_name!r} has no callable {attr!r} (model {ref!r})")
    made = factory()
    if isinstance(made, ModelSpec):
        return made
    if isinstance(made, DiT):
        return _reference_spec(ref, made)
    if isinstance(made, nn.Module):
        from ..integrations.diffusers import spec_from_module

        return spec_from_module(made, name=ref)
    raise InputError(f"{ref} returned {type(made).__name__}; expected an nn.Module or a ModelSpec")
